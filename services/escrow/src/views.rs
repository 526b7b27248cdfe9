//! Escrow's records as the API shows them: accounts, funding attempts,
//! gateway transfers, postings, holds, balances, reconciliation's findings and
//! the feed's events. Pure: everything is read before.

use ta_proto::{common::Money as PbMoney, escrow as pb};
use ta_runtime::{
    ServiceError,
    auth::Role,
    money::{Currency, Money},
    timestamps,
};
use uuid::Uuid;

use crate::{
    domain::{
        AccountKey, AccountKind, Discrepancy, EscrowAccount, HoldStatus, Status,
        funding::AttemptStatus,
    },
    storage::{
        accounts::{AccountDetails, Scheme},
        attempts::AttemptView,
        gateway_events::UnmatchedRow,
        statement::{self, BalanceRow, HoldRow, LegAccount, PostingRow},
        transfers::{TransferRow, TransferStatus},
    },
};

pub fn money(amount_minor: i64, currency: Currency) -> PbMoney {
    Money::new(amount_minor, currency).to_proto()
}

pub fn status_to_proto(status: Status) -> pb::EscrowAccountStatus {
    match status {
        Status::AwaitingFunding => pb::EscrowAccountStatus::AwaitingFunding,
        Status::PartiallyFunded => pb::EscrowAccountStatus::PartiallyFunded,
        Status::Funded => pb::EscrowAccountStatus::Funded,
        Status::Closed => pb::EscrowAccountStatus::Closed,
    }
}

pub fn kind_to_proto(kind: &str) -> pb::LedgerAccountKind {
    match AccountKind::parse(kind) {
        Some(AccountKind::EscrowHeld) => pb::LedgerAccountKind::EscrowHeld,
        Some(AccountKind::BuyerRefundPayable) => pb::LedgerAccountKind::BuyerRefundPayable,
        Some(AccountKind::SupplierPayable) => pb::LedgerAccountKind::SupplierPayable,
        Some(AccountKind::GatewayClearing) => pb::LedgerAccountKind::GatewayClearing,
        Some(AccountKind::Suspense) => pb::LedgerAccountKind::Suspense,
        Some(AccountKind::Fees) => pb::LedgerAccountKind::Fees,
        Some(AccountKind::FinancingPartner) => pb::LedgerAccountKind::FinancingPartner,
        None => pb::LedgerAccountKind::Unspecified,
    }
}

/// A ledger account as the API names it.
pub fn ledger_account(id: Uuid, kind: &str, owner: &str, currency: &str) -> pb::LedgerAccount {
    let proto_kind = kind_to_proto(kind);
    let mut account = pb::LedgerAccount {
        ledger_account_id: id.to_string(),
        kind: proto_kind as i32,
        currency_code: currency.to_owned(),
        ..Default::default()
    };
    match proto_kind {
        pb::LedgerAccountKind::EscrowHeld | pb::LedgerAccountKind::BuyerRefundPayable => {
            account.escrow_account_id = owner.to_owned();
        }
        pb::LedgerAccountKind::SupplierPayable => account.supplier_id = owner.to_owned(),
        pb::LedgerAccountKind::FinancingPartner => {
            account.financing_partner_id = owner.to_owned();
        }
        _ => {}
    }
    account
}

/// The account as the API shows it, with what storage keeps beside it
/// ([`crate::storage::accounts::read_details`]).
pub fn account_proto(
    account: &EscrowAccount,
    details: &AccountDetails,
) -> Result<pb::EscrowAccount, ServiceError> {
    let AccountDetails {
        terms,
        totals,
        freezes,
        updated_at,
        funded_at,
    } = details.clone();
    let c = account.currency;
    let next_due = account
        .schedule
        .iter()
        .filter(|p| !p.is_funded())
        .map(|p| p.due_at)
        .min()
        .filter(|_| account.status != Status::Closed);
    Ok(pb::EscrowAccount {
        payment_scheme: match terms.scheme {
            Scheme::Direct => pb::EscrowPaymentScheme::Direct,
            Scheme::PayLater => pb::EscrowPaymentScheme::PayLater,
        } as i32,
        financing_partner_id: terms.financing_partner_id,
        escrow_account_id: account.id.to_string(),
        contract_id: account.contract_id.clone(),
        buyer_principal_id: account.buyer_principal_id.clone(),
        supplier_id: account.supplier_id.clone(),
        currency_code: c.to_string(),
        status: status_to_proto(account.status) as i32,
        expected_total: Some(money(account.expected_total()?, c)),
        schedule: account
            .schedule
            .iter()
            .map(|p| pb::ScheduledPayment {
                milestone_id: p.milestone_id.clone(),
                amount: Some(money(p.amount_minor, c)),
                due_at: Some(timestamps::to_proto(p.due_at)),
                funded_at: funded_at
                    .get(&p.milestone_id)
                    .copied()
                    .map(timestamps::to_proto),
            })
            .collect(),
        next_payment_due_at: next_due.map(timestamps::to_proto),
        held: Some(money(totals.held, c)),
        funded_total: Some(money(totals.funded, c)),
        released_total: Some(money(totals.released, c)),
        refunded_total: Some(money(totals.refunded, c)),
        active_freezes: freezes
            .into_iter()
            .map(|(claim_id, reason, at)| pb::Freeze {
                claim_id,
                reason,
                frozen_at: Some(timestamps::to_proto(at)),
            })
            .collect(),
        created_at: Some(timestamps::to_proto(account.created_at)),
        updated_at: Some(timestamps::to_proto(updated_at)),
        closed_at: account.closed_at.map(timestamps::to_proto),
        supplier_owner_principal_id: terms.supplier_owner_principal_id,
        hold_until: Some(timestamps::to_proto(account.hold_until)),
    })
}

pub fn attempt_proto(a: &AttemptView) -> pb::FundingAttempt {
    let currency = Currency::parse(&a.currency);
    pb::FundingAttempt {
        funding_attempt_id: a.id.to_string(),
        escrow_account_id: a.escrow_account_id.to_string(),
        milestone_id: a.milestone_id.clone(),
        method: match a.method.as_str() {
            "card" => pb::FundingMethod::Card,
            "bank_transfer" => pb::FundingMethod::BankTransfer,
            _ => pb::FundingMethod::PayLater,
        } as i32,
        amount: currency.map(|c| money(a.amount_minor, c)),
        status: match AttemptStatus::parse(&a.status) {
            Some(AttemptStatus::Pending) => pb::FundingStatus::Pending,
            Some(AttemptStatus::Succeeded) => pb::FundingStatus::Succeeded,
            Some(AttemptStatus::Failed) => pb::FundingStatus::Failed,
            None => pb::FundingStatus::Unspecified,
        } as i32,
        gateway_reference: a.gateway_reference.clone().unwrap_or_default(),
        failure_code: a.failure_code.clone(),
        failure_message: a.failure_message.clone().unwrap_or_default(),
        bank_transfer_instructions: a.iban.as_ref().map(|iban| pb::BankTransferInstructions {
            beneficiary_name: a.beneficiary_name.clone().unwrap_or_default(),
            iban: iban.clone(),
            bic: a.bic.clone().unwrap_or_default(),
            payment_reference: a.payment_reference.clone().unwrap_or_default(),
        }),
        financing_partner_id: a.financing_partner_id.clone().unwrap_or_default(),
        loan_reference: a.loan_reference.clone().unwrap_or_default(),
        hold_id: a.hold_id.map(|h| h.to_string()).unwrap_or_default(),
        expires_at: Some(timestamps::to_proto(a.expires_at)),
        created_at: Some(timestamps::to_proto(a.created_at)),
        resolved_at: a.resolved_at.map(timestamps::to_proto),
    }
}

pub fn transfer_proto(t: &TransferRow) -> pb::GatewayTransfer {
    pb::GatewayTransfer {
        gateway_transfer_id: t.id.to_string(),
        direction: match t.direction.as_str() {
            "payout" => pb::GatewayTransferDirection::Payout,
            "buyer_refund" => pb::GatewayTransferDirection::BuyerRefund,
            _ => pb::GatewayTransferDirection::SuspenseRefund,
        } as i32,
        status: match TransferStatus::parse(&t.status) {
            Some(TransferStatus::Sending) => pb::GatewayTransferStatus::Sending,
            Some(TransferStatus::Pending) => pb::GatewayTransferStatus::Pending,
            Some(TransferStatus::Unknown) => pb::GatewayTransferStatus::Unknown,
            Some(TransferStatus::Paid) => pb::GatewayTransferStatus::Paid,
            Some(TransferStatus::Failed) => pb::GatewayTransferStatus::Failed,
            None => pb::GatewayTransferStatus::Unspecified,
        } as i32,
        amount: Currency::parse(&t.currency).map(|c| money(t.amount_minor, c)),
        supplier_id: t.supplier_id.clone().unwrap_or_default(),
        escrow_account_id: t
            .escrow_account_id
            .map(|id| id.to_string())
            .unwrap_or_default(),
        gateway_reference: t.gateway_reference.clone().unwrap_or_default(),
        hold_id: t.id.to_string(),
        failure_code: t.failure_code.clone(),
        created_at: Some(timestamps::to_proto(t.created_at)),
        resolved_at: t.resolved_at.map(timestamps::to_proto),
        source_reference: t.source_reference.clone().unwrap_or_default(),
        funding_attempt_id: t
            .funding_attempt_id
            .map(|id| id.to_string())
            .unwrap_or_default(),
        next_check_at: t
            .check_at
            .filter(|_| TransferStatus::parse(&t.status).is_some_and(TransferStatus::is_open))
            .map(timestamps::to_proto),
    }
}

pub fn kind_of_purpose(purpose: &str) -> pb::PostingKind {
    let prefix = purpose.split(':').next().unwrap_or_default();
    match prefix {
        "funding" => pb::PostingKind::Funding,
        "release" => pb::PostingKind::Release,
        "refund" => pb::PostingKind::Refund,
        "payout" => pb::PostingKind::Payout,
        "buyer-refund" => pb::PostingKind::RefundPayment,
        "unmatched-credit" | "suspense-refund" => pb::PostingKind::Suspense,
        "correction" => pb::PostingKind::Correction,
        _ => pb::PostingKind::Unspecified,
    }
}

pub fn purpose_proto(purpose: &str) -> Option<pb::Purpose> {
    use pb::purpose::Purpose as P;
    let parts: Vec<&str> = purpose.splitn(3, ':').collect();
    let p = match parts.as_slice() {
        ["release", "milestone", m] => P::MilestoneId((*m).to_owned()),
        ["release", "acceptance"] => P::Acceptance(true),
        ["refund", "cancellation"] => P::Cancellation(true),
        ["release" | "refund", "claim", c] => P::ClaimId((*c).to_owned()),
        ["refund", "amendment", v] => P::AmendmentVersion(v.parse().ok()?),
        _ => return None,
    };
    Some(pb::Purpose { purpose: Some(p) })
}

pub fn leg_account(a: &LegAccount, currency: &str) -> pb::LedgerAccount {
    ledger_account(a.id, &a.kind, &a.owner, currency)
}

pub fn posting_proto(p: &PostingRow) -> pb::Posting {
    let currency = Currency::parse(&p.currency);
    pb::Posting {
        posting_id: p.id.to_string(),
        escrow_account_id: p
            .escrow_account_id
            .map(|id| id.to_string())
            .unwrap_or_default(),
        kind: kind_of_purpose(&p.purpose) as i32,
        debit_account: Some(leg_account(&p.leg.debit, &p.currency)),
        credit_account: Some(leg_account(&p.leg.credit, &p.currency)),
        amount: currency.map(|c| money(p.amount_minor, c)),
        hold_id: p.hold_id.map(|h| h.to_string()).unwrap_or_default(),
        funding_attempt_id: p
            .funding_attempt_id
            .map(|h| h.to_string())
            .unwrap_or_default(),
        purpose: purpose_proto(&p.purpose),
        reason: p.reason.clone().unwrap_or_default(),
        actor: p
            .actor_principal_id
            .as_ref()
            .map(|id| ta_proto::common::Actor {
                principal_id: id.clone(),
                role: role_proto(p.actor_role.as_deref().unwrap_or_default()) as i32,
            }),
        posted_at: Some(timestamps::to_proto(p.posted_at)),
        transfer_id: p.transfer_id.to_string(),
        corrects_posting_id: String::new(),
    }
}

fn role_proto(role: &str) -> ta_proto::common::Role {
    role.parse::<Role>()
        .map_or(ta_proto::common::Role::Unspecified, Role::to_proto)
}

/// A ledger account's balance on an account's statement.
pub fn balance_proto(b: &BalanceRow) -> Option<pb::LedgerBalance> {
    let c = Currency::parse(&b.currency)?;
    Some(pb::LedgerBalance {
        account: Some(ledger_account(b.id, &b.kind, &b.owner, &b.currency)),
        posted: Some(money(b.posted, c)),
        pending: Some(money(b.pending, c)),
    })
}

pub fn hold_proto(h: &HoldRow) -> pb::Hold {
    let c = Currency::parse(&h.currency);
    pb::Hold {
        hold_id: h.id.to_string(),
        debit_account: Some(leg_account(&h.leg.debit, &h.currency)),
        credit_account: Some(leg_account(&h.leg.credit, &h.currency)),
        amount: c.map(|c| money(h.amount_minor, c)),
        status: match statement::hold_status(&h.status) {
            HoldStatus::Pending => pb::HoldStatus::Pending,
            HoldStatus::Posted => pb::HoldStatus::Posted,
            HoldStatus::Voided => pb::HoldStatus::Voided,
        } as i32,
        funding_attempt_id: h
            .funding_attempt_id
            .map(|a| a.to_string())
            .unwrap_or_default(),
        created_at: Some(timestamps::to_proto(h.created_at)),
        expires_at: Some(timestamps::to_proto(h.expires_at)),
        resolved_at: h.resolved_at.map(timestamps::to_proto),
        gateway_transfer_id: h
            .gateway_transfer_id
            .map(|a| a.to_string())
            .unwrap_or_default(),
        posted_amount: h.posted_minor.and_then(|p| c.map(|c| money(p, c))),
    }
}

/// The trial balance from its rows (kind, currency, posted, pending), in
/// currency order: each currency's lines and their sum.
pub fn trial_balance(
    rows: Vec<(String, String, i64, i64)>,
) -> Result<Vec<pb::CurrencyTrialBalance>, ServiceError> {
    let mut currencies: Vec<pb::CurrencyTrialBalance> = Vec::new();
    // Each currency's sum, in i128 so that no order of the lines
    // overflows on the way to what should be zero.
    let mut sums: Vec<(i128, Currency)> = Vec::new();
    for (kind, code, posted, pending) in rows {
        let Some(c) = Currency::parse(&code) else {
            continue;
        };
        if currencies.last().map(|x| x.currency_code.as_str()) != Some(code.as_str()) {
            currencies.push(pb::CurrencyTrialBalance {
                currency_code: code.clone(),
                lines: Vec::new(),
                sum: None,
            });
            sums.push((0, c));
        }
        if let Some(entry) = currencies.last_mut() {
            entry.lines.push(pb::TrialBalanceLine {
                kind: kind_to_proto(&kind) as i32,
                posted: Some(money(posted, c)),
                pending: Some(money(pending, c)),
            });
        }
        if let Some((sum, _)) = sums.last_mut() {
            *sum += i128::from(posted);
        }
    }
    for (entry, (sum, c)) in currencies.iter_mut().zip(sums) {
        let sum = i64::try_from(sum).map_err(|_| {
            ServiceError::internal(format!(
                "the trial balance of {} is beyond an i64: {sum}",
                entry.currency_code
            ))
        })?;
        entry.sum = Some(money(sum, c));
    }
    Ok(currencies)
}

pub fn unmatched_proto(r: UnmatchedRow) -> pb::UnmatchedGatewayItem {
    pb::UnmatchedGatewayItem {
        kind: r.unmatched,
        gateway_event_id: r.event_id,
        gateway_reference: r.gateway_reference,
        amount: match (
            r.amount_minor,
            r.currency.as_deref().and_then(Currency::parse),
        ) {
            (Some(a), Some(c)) => Some(money(a, c)),
            _ => None,
        },
        gateway_transfer_id: r.refund_reference.unwrap_or_default(),
        received_at: Some(timestamps::to_proto(r.received_at)),
    }
}

pub fn difference_proto(d: &Discrepancy) -> pb::LedgerDifference {
    use Discrepancy as D;
    let key_proto = |k: &AccountKey| pb::LedgerAccount {
        kind: kind_to_proto(k.kind.as_str()) as i32,
        currency_code: k.currency.to_string(),
        ..ledger_account(Uuid::nil(), k.kind.as_str(), &k.owner, k.currency.as_str())
    };
    match d {
        D::BalanceMismatch {
            account,
            kept,
            recomputed,
        } => pb::LedgerDifference {
            kind: "BALANCE_MISMATCH".into(),
            account: Some(key_proto(account)),
            expected: Some(money(*recomputed, account.currency)),
            actual: Some(money(*kept, account.currency)),
            detail: format!("kept {kept}, postings say {recomputed}"),
        },
        D::CurrencyImbalance { currency, sum } => pb::LedgerDifference {
            kind: "CURRENCY_IMBALANCE".into(),
            detail: format!("{currency} sums to {sum}"),
            ..Default::default()
        },
        D::Negative { account, available } => pb::LedgerDifference {
            kind: "NEGATIVE_BALANCE".into(),
            account: Some(key_proto(account)),
            actual: Some(money(*available, account.currency)),
            detail: format!("available {available}"),
            ..Default::default()
        },
        D::HoldMismatch { hold, detail } => pb::LedgerDifference {
            kind: "HOLD_MISMATCH".into(),
            detail: format!("hold {hold}: {detail}"),
            ..Default::default()
        },
        D::PostingCurrency { posting } => pb::LedgerDifference {
            kind: "POSTING_CURRENCY".into(),
            detail: format!("posting {posting} is in another currency than its accounts"),
            ..Default::default()
        },
        D::HeldWithoutDeadline { account, held } => pb::LedgerDifference {
            kind: "HELD_WITHOUT_DEADLINE".into(),
            account: Some(key_proto(account)),
            actual: Some(money(*held, account.currency)),
            detail: format!(
                "escrow account {} holds {held} with no scheduled timer (hold_deadline or payment_due) and no active freeze",
                account.owner
            ),
            ..Default::default()
        },
        D::GatewayItem {
            kind,
            currency,
            amount,
            detail,
        } => pb::LedgerDifference {
            kind: (*kind).into(),
            actual: Some(money(*amount, *currency)),
            detail: detail.clone(),
            ..Default::default()
        },
    }
}

/// What an event says beside its type and account.
#[derive(Default)]
pub struct EventFacts<'a> {
    pub amount_minor: Option<i64>,
    pub milestone_id: &'a str,
    pub funding_attempt_id: Option<Uuid>,
    pub claim_id: &'a str,
}

/// The feed's event of `kind` about `account` (shown as `shown`, after the
/// change), saying `facts`; its sequence is the feed's to set. The contract's
/// `contract_event` opens alike, but each fills its own generated message,
/// which share no Rust type to write that once for.
pub fn escrow_event(
    kind: pb::EscrowEventType,
    account: &EscrowAccount,
    shown: &pb::EscrowAccount,
    facts: EventFacts<'_>,
    occurred_at: time::OffsetDateTime,
) -> pb::EscrowEvent {
    pb::EscrowEvent {
        sequence: 0,
        r#type: kind as i32,
        occurred_at: Some(timestamps::to_proto(occurred_at)),
        escrow_account_id: account.id.to_string(),
        contract_id: account.contract_id.clone(),
        amount: facts.amount_minor.map(|a| money(a, account.currency)),
        milestone_id: facts.milestone_id.to_owned(),
        funding_attempt_id: facts
            .funding_attempt_id
            .map(|id| id.to_string())
            .unwrap_or_default(),
        claim_id: facts.claim_id.to_owned(),
        account: Some(shown.clone()),
    }
}

/// The feed's name for an event type (`FUNDED`, say).
pub fn event_name(kind: pb::EscrowEventType) -> String {
    kind.as_str_name()
        .trim_start_matches("ESCROW_EVENT_TYPE_")
        .to_owned()
}
