//! The platform's services as the outbox calls them: the relay's name for
//! each (its peer, and the audience of the token sent to it) and its gRPC
//! service's full name. Services' effects build their calls with these.

use crate::outbox::Callee;

pub const CONTRACT_CALLS: Callee = Callee {
    name: "contract",
    service: "tradeassurance.contract.v1.ContractService",
};

pub const ESCROW_CALLS: Callee = Callee {
    name: "escrow",
    service: "tradeassurance.escrow.v1.EscrowService",
};

pub const REGISTRY_CALLS: Callee = Callee {
    name: "supplier-registry",
    service: "tradeassurance.supplier.v1.SupplierRegistryService",
};
