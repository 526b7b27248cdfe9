//! The dispute service. Its domain is written first (pure rules, tested);
//! evidence storage, persistence, transport and wiring follow, and until they
//! do `main` serves health and reflection only.

pub mod domain;
