//! Negotiation: every change of terms is a new version, and both parties sign
//! the same, latest version. A revision voids the signatures on the version
//! it replaces; a stale edit or signature is refused, so neither party can
//! sign something other than what it read.

use ta_runtime::ServiceError;
use time::OffsetDateTime;

use super::status::{Action, Status};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Party {
    Buyer,
    Supplier,
}

impl Party {
    pub fn as_str(self) -> &'static str {
        match self {
            Party::Buyer => "buyer",
            Party::Supplier => "supplier",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protection {
    /// Escrow, cover and claims.
    TradeAssurance,
    /// Paid outside the platform: recorded and shown as unprotected.
    None,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    pub party: Party,
    pub principal_id: String,
    pub version: u32,
    pub signed_at: OffsetDateTime,
}

/// What a signature did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signed {
    /// The first party signed; the other's signature is awaited.
    First,
    /// Both signed a Trade Assurance contract: cover and escrow are requested
    /// (the contract is `activating` until supplier registry answers).
    BothProtected,
    /// Both signed an unprotected contract: it is in force as it is.
    BothUnprotected,
}

/// The negotiation state of one contract.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiation {
    pub status: Status,
    pub protection: Protection,
    pub latest_version: u32,
    /// The version both signed; 0 until then.
    pub signed_version: u32,
    /// Signatures on the latest version.
    pub signatures: Vec<Signature>,
    /// An amendment to the signed terms awaiting signatures (0 when none).
    pub pending_amendment: u32,
    /// Signatures on the pending amendment.
    pub amendment_signatures: Vec<Signature>,
}

/// What a signature on an amendment did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Amended {
    /// One party signed; the other's signature is awaited.
    First,
    /// Both signed: the amendment becomes the signed version once
    /// [`Negotiation::apply_amendment`] runs (at once when unprotected; once
    /// cover and escrow followed its total under Trade Assurance).
    Both,
}

impl Negotiation {
    /// A new contract: version 1, a draft nobody signed.
    pub fn new(protection: Protection) -> Self {
        Self {
            status: Status::Draft,
            protection,
            latest_version: 1,
            signed_version: 0,
            signatures: Vec::new(),
            pending_amendment: 0,
            amendment_signatures: Vec::new(),
        }
    }

    /// Signed terms can be amended while the order is under way, until the
    /// goods are received: afterwards only a claim changes what is owed.
    fn amendable(&self) -> Result<(), ServiceError> {
        match self.status {
            Status::AwaitingPayment
            | Status::PartiallyFunded
            | Status::Funded
            | Status::SignedUnprotected
            | Status::Shipped => Ok(()),
            other => Err(ServiceError::FailedPrecondition(format!(
                "the contract is {}: only a signed contract not yet received can be amended",
                other.as_str()
            ))),
        }
    }

    /// Proposes an amendment of the signed version `base_version`; returns
    /// the amendment's version. A newer proposal replaces a pending one (its
    /// signatures are void).
    pub fn propose_amendment(&mut self, base_version: u32) -> Result<u32, ServiceError> {
        self.amendable()?;
        self.not_while_applying()?;
        if base_version != self.signed_version {
            return Err(ServiceError::Aborted(format!(
                "version {base_version} is not the signed version (version {} is); read it and propose again",
                self.signed_version
            )));
        }
        self.latest_version += 1;
        self.pending_amendment = self.latest_version;
        self.amendment_signatures.clear();
        Ok(self.latest_version)
    }

    /// `party`'s signature on the pending amendment `version`.
    pub fn sign_amendment(
        &mut self,
        party: Party,
        principal_id: &str,
        version: u32,
        at: OffsetDateTime,
    ) -> Result<Amended, ServiceError> {
        self.amendable()?;
        if self.pending_amendment == 0 || version != self.pending_amendment {
            return Err(ServiceError::FailedPrecondition(
                match self.pending_amendment {
                    0 => "no amendment is pending".to_owned(),
                    pending => format!(
                        "version {version} is not the pending amendment (version {pending} is)"
                    ),
                },
            ));
        }
        if self.amendment_signatures.iter().any(|s| s.party == party) {
            return Err(ServiceError::FailedPrecondition(format!(
                "the {} already signed amendment {version}",
                party.as_str()
            )));
        }
        self.amendment_signatures.push(Signature {
            party,
            principal_id: principal_id.to_owned(),
            version,
            signed_at: at,
        });
        if self.amendment_signatures.len() < 2 {
            return Ok(Amended::First);
        }
        Ok(Amended::Both)
    }

    /// Both signed the pending amendment and are waiting for it to apply.
    pub fn amendment_signed_by_both(&self) -> bool {
        self.pending_amendment != 0 && self.amendment_signatures.len() == 2
    }

    fn not_while_applying(&self) -> Result<(), ServiceError> {
        if self.amendment_signed_by_both() {
            return Err(ServiceError::FailedPrecondition(format!(
                "amendment {} is signed by both and being applied (cover and escrow follow it)",
                self.pending_amendment
            )));
        }
        Ok(())
    }

    /// The amendment both signed becomes the signed version.
    pub fn apply_amendment(&mut self) -> Result<u32, ServiceError> {
        if !self.amendment_signed_by_both() {
            return Err(ServiceError::FailedPrecondition(
                "no amendment is signed by both parties".into(),
            ));
        }
        self.signed_version = self.pending_amendment;
        self.signatures = std::mem::take(&mut self.amendment_signatures);
        self.pending_amendment = 0;
        Ok(self.signed_version)
    }

    /// Supplier registry refused the cover the amendment needs: it stays
    /// proposed and unsigned, the signed version stays in force.
    pub fn amendment_refused(&mut self) {
        self.amendment_signatures.clear();
    }

    /// Escrow refused the schedule of the amendment both signed, after
    /// supplier-registry had moved the cover to its total. The amendment is
    /// void, not merely unsigned: its cover adjustment is spent (a registry
    /// orders adjustments by version and ignores an older or equal one), so
    /// signing it again could apply it with the cover left behind. A new
    /// version restores the signed terms; its number orders the cover moved
    /// back after the amendment's. Returns it; the signed version stays in
    /// force and the parties propose again.
    pub fn amendment_undone(&mut self) -> u32 {
        self.pending_amendment = 0;
        self.amendment_signatures.clear();
        self.latest_version += 1;
        self.latest_version
    }

    /// Withdraws the pending amendment; the signed version stays in force.
    pub fn withdraw_amendment(&mut self, version: u32) -> Result<(), ServiceError> {
        self.not_while_applying()?;
        if self.pending_amendment == 0 || version != self.pending_amendment {
            return Err(ServiceError::FailedPrecondition(format!(
                "version {version} is not a pending amendment"
            )));
        }
        self.pending_amendment = 0;
        self.amendment_signatures.clear();
        Ok(())
    }

    /// Replaces the terms with a new version based on `base_version`; returns
    /// the new version. A base that is no longer the latest is ABORTED (a
    /// concurrent edit won: reread and revise again).
    pub fn revise(&mut self, base_version: u32) -> Result<u32, ServiceError> {
        let next = self.status.next(Action::Revise)?;
        if base_version != self.latest_version {
            return Err(ServiceError::Aborted(format!(
                "version {base_version} is no longer the latest (version {} is); read it and revise again",
                self.latest_version
            )));
        }
        self.latest_version += 1;
        self.signatures.clear();
        self.status = next;
        Ok(self.latest_version)
    }

    /// `party`'s signature on `version`, which must be the latest.
    pub fn sign(
        &mut self,
        party: Party,
        principal_id: &str,
        version: u32,
        at: OffsetDateTime,
    ) -> Result<Signed, ServiceError> {
        let (action, signed) = match (self.signatures.is_empty(), self.protection) {
            (true, _) => (Action::SignFirst, Signed::First),
            (false, Protection::TradeAssurance) => {
                (Action::SignSecondProtected, Signed::BothProtected)
            }
            (false, Protection::None) => (Action::SignSecondUnprotected, Signed::BothUnprotected),
        };
        let next = self.status.next(action)?;
        if version != self.latest_version {
            return Err(ServiceError::FailedPrecondition(format!(
                "version {version} is not the latest: version {} is; read it before signing",
                self.latest_version
            )));
        }
        if self.signatures.iter().any(|s| s.party == party) {
            return Err(ServiceError::FailedPrecondition(format!(
                "the {} already signed version {version}; the other party's signature is awaited",
                party.as_str()
            )));
        }
        self.signatures.push(Signature {
            party,
            principal_id: principal_id.to_owned(),
            version,
            signed_at: at,
        });
        if signed != Signed::First {
            self.signed_version = version;
        }
        self.status = next;
        Ok(signed)
    }

    /// Cover and escrow are in place: the contract awaits payment.
    pub fn activated(&mut self) -> Result<(), ServiceError> {
        self.status = self.status.next(Action::Activated)?;
        Ok(())
    }

    /// Supplier registry refused the cover (no badge, restricted, over the
    /// limit): back to a draft both must sign again, nothing left half-done.
    pub fn activation_refused(&mut self) -> Result<(), ServiceError> {
        self.status = self.status.next(Action::ActivationRefused)?;
        self.signatures.clear();
        self.signed_version = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: OffsetDateTime = time::macros::datetime!(2026-12-01 10:00 UTC);

    #[test]
    fn both_sign_the_latest_version_then_cover_is_requested() {
        let mut n = Negotiation::new(Protection::TradeAssurance);
        assert_eq!(
            n.sign(Party::Buyer, "buyer-1", 1, AT).unwrap(),
            Signed::First
        );
        assert_eq!(n.status, Status::AwaitingSignatures);
        assert_eq!(
            n.sign(Party::Supplier, "owner-1", 1, AT).unwrap(),
            Signed::BothProtected
        );
        assert_eq!((n.status, n.signed_version), (Status::Activating, 1));
        n.activated().unwrap();
        assert_eq!(n.status, Status::AwaitingPayment);
    }

    #[test]
    fn a_revision_voids_the_signatures_on_the_version_it_replaces() {
        let mut n = Negotiation::new(Protection::TradeAssurance);
        n.sign(Party::Supplier, "owner-1", 1, AT).unwrap();
        assert_eq!(n.revise(1).unwrap(), 2);
        assert_eq!((n.status, n.signatures.len()), (Status::Draft, 0));
        // A signature on what is no longer the latest version is refused.
        let stale = n.sign(Party::Buyer, "buyer-1", 1, AT).unwrap_err();
        assert!(stale.to_string().contains("version 2 is"), "{stale}");
        // So is an edit based on it: the concurrent edit is not lost.
        assert!(matches!(n.revise(1), Err(ServiceError::Aborted(_))));
        assert_eq!(n.latest_version, 2);
    }

    #[test]
    fn a_party_signs_once_and_nobody_signs_or_revises_after_both_did() {
        let mut n = Negotiation::new(Protection::None);
        n.sign(Party::Buyer, "buyer-1", 1, AT).unwrap();
        let twice = n.sign(Party::Buyer, "buyer-1", 1, AT).unwrap_err();
        assert!(twice.to_string().contains("already signed"), "{twice}");
        assert_eq!(
            n.sign(Party::Supplier, "owner-1", 1, AT).unwrap(),
            Signed::BothUnprotected
        );
        assert_eq!(n.status, Status::SignedUnprotected);
        let late = n.revise(1).unwrap_err();
        assert!(late.to_string().contains("signed_unprotected"), "{late}");
        assert!(n.sign(Party::Buyer, "buyer-1", 1, AT).is_err());
    }

    fn signed_and_funded() -> Negotiation {
        let mut n = Negotiation::new(Protection::TradeAssurance);
        n.sign(Party::Buyer, "buyer-1", 1, AT).unwrap();
        n.sign(Party::Supplier, "owner-1", 1, AT).unwrap();
        n.activated().unwrap();
        n.status = n
            .status
            .next(super::super::status::Action::FullyFunded)
            .unwrap();
        n
    }

    #[test]
    fn an_amendment_becomes_the_signed_version_once_both_sign_it() {
        let mut n = signed_and_funded();
        assert_eq!(n.propose_amendment(1).unwrap(), 2);
        assert_eq!(
            n.sign_amendment(Party::Supplier, "owner-1", 2, AT).unwrap(),
            Amended::First
        );
        assert_eq!(n.signed_version, 1, "in force until both signed");
        assert!(n.sign_amendment(Party::Supplier, "owner-1", 2, AT).is_err());
        assert_eq!(
            n.sign_amendment(Party::Buyer, "buyer-1", 2, AT).unwrap(),
            Amended::Both
        );
        assert!(n.propose_amendment(1).is_err(), "not while it is applied");
        assert_eq!(n.apply_amendment().unwrap(), 2);
        assert_eq!(
            (n.signed_version, n.pending_amendment, n.status),
            (2, 0, Status::Funded)
        );
        // The next amendment builds on version 2; one based on 1 is stale.
        assert!(matches!(
            n.propose_amendment(1),
            Err(ServiceError::Aborted(_))
        ));
        assert_eq!(n.propose_amendment(2).unwrap(), 3);
    }

    #[test]
    fn a_new_proposal_replaces_the_pending_one_and_withdrawal_keeps_the_signed_terms() {
        let mut n = signed_and_funded();
        n.propose_amendment(1).unwrap();
        n.sign_amendment(Party::Buyer, "buyer-1", 2, AT).unwrap();
        assert_eq!(n.propose_amendment(1).unwrap(), 3);
        assert!(
            n.amendment_signatures.is_empty(),
            "the replaced amendment's signature is void"
        );
        assert!(n.sign_amendment(Party::Supplier, "owner-1", 2, AT).is_err());
        n.withdraw_amendment(3).unwrap();
        assert_eq!((n.signed_version, n.pending_amendment), (1, 0));
        assert!(n.sign_amendment(Party::Buyer, "buyer-1", 3, AT).is_err());
        // Drafts and finished contracts are not amended.
        let mut draft = Negotiation::new(Protection::TradeAssurance);
        assert!(draft.propose_amendment(0).is_err());
    }

    #[test]
    fn an_amendment_escrow_refused_is_void_and_the_next_version_restores_the_signed_terms() {
        let mut n = signed_and_funded();
        n.propose_amendment(1).unwrap();
        n.sign_amendment(Party::Buyer, "buyer-1", 2, AT).unwrap();
        n.sign_amendment(Party::Supplier, "owner-1", 2, AT).unwrap();
        assert_eq!(n.amendment_undone(), 3);
        assert_eq!((n.signed_version, n.pending_amendment), (1, 0));
        assert!(
            n.sign_amendment(Party::Buyer, "buyer-1", 2, AT).is_err(),
            "the refused amendment cannot be signed again"
        );
        assert_eq!(n.propose_amendment(1).unwrap(), 4, "proposed again");
    }

    #[test]
    fn a_refused_cover_returns_to_a_draft_without_signatures() {
        let mut n = Negotiation::new(Protection::TradeAssurance);
        n.sign(Party::Buyer, "buyer-1", 1, AT).unwrap();
        n.sign(Party::Supplier, "owner-1", 1, AT).unwrap();
        n.activation_refused().unwrap();
        assert_eq!(n, Negotiation::new(Protection::TradeAssurance));
        assert!(
            n.activated().is_err(),
            "only an activating contract activates"
        );
    }
}
