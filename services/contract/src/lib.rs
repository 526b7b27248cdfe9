//! The contract service. Its domain is written first (pure rules, tested);
//! storage, transport and wiring follow, and until they do `main` serves
//! health and reflection only.

pub mod domain;
pub mod storage;
