//! The contract's timeline: `contract.timeline`, kept by
//! [`ta_workflow::timeline`].

ta_workflow::timeline_storage!(super::schema(), "contract_id");
