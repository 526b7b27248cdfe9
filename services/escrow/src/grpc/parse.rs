//! Requests into commands, every bad field reported at once (the pipeline
//! turns the violations into one INVALID_ARGUMENT), and the listings' page
//! tokens.

use ta_proto::escrow as pb;
use ta_runtime::{
    ServiceError, Violations,
    money::{Currency, Money},
    paging,
    text::{require_text, validate_reference},
    timestamps,
};
use time::OffsetDateTime;
use tonic::Status;
use uuid::Uuid;

use crate::{
    app::{
        accounts::{ClaimCommand, Open},
        amendments::Amend,
        funding::{Fund, Method},
        settlement::{Close, Outflow, Settle},
    },
    domain::{NewAccount, Settles, Status as AccountStatus, account::hold_until_problem},
    storage::accounts::{AccountFilter, Scheme, Terms},
};

/// The longest reason a request may give.
const MAX_REASON: usize = 500;

/// OpenEscrowAccount: the account, its schedule and hold deadline, its terms.
pub(super) fn open(
    req: &pb::OpenEscrowAccountRequest,
    v: &mut Violations,
) -> Result<Open, ServiceError> {
    let contract_id = reference("contract_id", &req.contract_id, v);
    let buyer = reference("buyer_principal_id", &req.buyer_principal_id, v);
    let supplier = reference("supplier_id", &req.supplier_id, v);
    let owner = reference(
        "supplier_owner_principal_id",
        &req.supplier_owner_principal_id,
        v,
    );
    let schedule = schedule("schedule", &req.schedule, v);
    let hold_until = hold_until(
        req.hold_until.as_ref(),
        &schedule,
        true,
        timestamps::now(),
        v,
    );
    let scheme = match pb::EscrowPaymentScheme::try_from(req.payment_scheme) {
        Ok(pb::EscrowPaymentScheme::Direct) => Some(Scheme::Direct),
        Ok(pb::EscrowPaymentScheme::PayLater) => Some(Scheme::PayLater),
        _ => {
            v.add("payment_scheme", "must be DIRECT or PAY_LATER");
            None
        }
    };
    match scheme {
        Some(Scheme::PayLater) => {
            validate_reference("financing_partner_id", &req.financing_partner_id, v);
        }
        Some(Scheme::Direct) if !req.financing_partner_id.is_empty() => v.add(
            "financing_partner_id",
            "must be empty unless the scheme is PAY_LATER",
        ),
        _ => {}
    }
    Ok(Open {
        new: NewAccount {
            contract_id,
            buyer_principal_id: buyer,
            supplier_id: supplier,
            schedule,
            hold_until: hold_until.ok_or_else(invalid)?,
        },
        terms: Terms {
            scheme: scheme.ok_or_else(invalid)?,
            financing_partner_id: req.financing_partner_id.clone(),
            supplier_owner_principal_id: owner,
            contract_version: 1,
        },
    })
}

/// AmendEscrowSchedule: the new schedule, a new hold deadline or none, the version.
pub(super) fn amend(
    req: &pb::AmendEscrowScheduleRequest,
    v: &mut Violations,
) -> Result<Amend, ServiceError> {
    let account_id = parse_id("escrow_account_id", &req.escrow_account_id, v);
    let schedule = schedule("schedule", &req.schedule, v);
    let hold_until = hold_until(
        req.hold_until.as_ref(),
        &schedule,
        false,
        timestamps::now(),
        v,
    );
    if req.contract_version < 2 {
        v.add(
            "contract_version",
            "must be 2 or more (an amendment's version)",
        );
    }
    Ok(Amend {
        account_id,
        schedule,
        hold_until,
        version: i32::try_from(req.contract_version)
            .map_err(|_| ServiceError::invalid("contract_version", "is too large"))?,
    })
}

/// FundEscrow: the payment, its amount and how it is paid.
pub(super) fn fund(req: &pb::FundEscrowRequest, v: &mut Violations) -> Result<Fund, ServiceError> {
    use pb::fund_escrow_request::Method as M;
    let account_id = parse_id("escrow_account_id", &req.escrow_account_id, v);
    let milestone_id = reference("milestone_id", &req.milestone_id, v);
    let amount = positive("amount", req.amount.as_ref(), v);
    let method = match &req.method {
        None => {
            v.add(
                "method",
                "one of card, bank_transfer or pay_later is required",
            );
            None
        }
        Some(M::Card(card)) => {
            validate_reference("card.card_token", &card.card_token, v);
            Some(Method::Card {
                token: card.card_token.clone(),
            })
        }
        Some(M::BankTransfer(bank)) => Some(Method::BankTransfer {
            payer_name: require_text("bank_transfer.payer_name", &bank.payer_name, 200, v),
        }),
        Some(M::PayLater(later)) => {
            validate_reference(
                "pay_later.financing_partner_id",
                &later.financing_partner_id,
                v,
            );
            v.require(
                (1..=6).contains(&later.repayment_months),
                "pay_later.repayment_months",
                "must be 1-6",
            );
            Some(Method::PayLater {
                partner_id: later.financing_partner_id.clone(),
                months: later.repayment_months,
            })
        }
    };
    Ok(Fund {
        account_id,
        milestone_id,
        amount: amount.ok_or_else(invalid)?,
        method: method.ok_or_else(invalid)?,
    })
}

/// SettleClaim: the claim, its refund (zero: none), whether the rest is released.
pub(super) fn settle(
    req: &pb::SettleClaimRequest,
    v: &mut Violations,
) -> Result<Settle, ServiceError> {
    let refund = match &req.refund {
        None => None,
        Some(m) if m.amount_minor == 0 => None,
        Some(m) => positive("refund", Some(m), v),
    };
    Ok(Settle {
        account_id: parse_id("escrow_account_id", &req.escrow_account_id, v),
        claim_id: reference("claim_id", &req.claim_id, v),
        refund,
        release_rest: req.release_rest,
        reason: require_text("reason", &req.reason, MAX_REASON, v),
    })
}

/// CloseEscrowAccount: the account, the reason, whether what is held is refunded.
pub(super) fn close(
    req: &pb::CloseEscrowAccountRequest,
    v: &mut Violations,
) -> Result<Close, ServiceError> {
    Ok(Close {
        account_id: parse_id("escrow_account_id", &req.escrow_account_id, v),
        reason: require_text("reason", &req.reason, MAX_REASON, v),
        refund_held: req.refund_held,
    })
}

/// RunSupplierPayouts: one supplier or all, one currency or all.
pub(super) fn payouts(
    req: &pb::RunSupplierPayoutsRequest,
    v: &mut Violations,
) -> Result<(Option<String>, Option<Currency>), ServiceError> {
    let supplier = if req.supplier_id.is_empty() {
        None
    } else {
        Some(reference("supplier_id", &req.supplier_id, v))
    };
    let currency = optional_currency(&req.currency_code, v);
    Ok((supplier, currency))
}

/// ReleaseToSupplier: the account, the amount (unset: all held), why, for what.
pub(super) fn release(
    req: &pb::ReleaseToSupplierRequest,
    v: &mut Violations,
) -> Result<Outflow, ServiceError> {
    outflow(
        &req.escrow_account_id,
        req.amount.as_ref(),
        &req.reason,
        req.purpose.as_ref(),
        v,
    )
}

/// RefundToBuyer: the account, the amount (unset: all held), why, for what.
pub(super) fn refund(
    req: &pb::RefundToBuyerRequest,
    v: &mut Violations,
) -> Result<Outflow, ServiceError> {
    outflow(
        &req.escrow_account_id,
        req.amount.as_ref(),
        &req.reason,
        req.purpose.as_ref(),
        v,
    )
}

pub(super) fn parse_id(field: &str, value: &str, v: &mut Violations) -> Uuid {
    Uuid::parse_str(value).unwrap_or_else(|_| {
        v.add(field, "must be an escrow account id (UUID)");
        Uuid::nil()
    })
}

pub(super) fn reference(field: &str, value: &str, v: &mut Violations) -> String {
    validate_reference(field, value, v);
    value.to_owned()
}

pub(super) fn positive(
    field: &str,
    m: Option<&ta_proto::common::Money>,
    v: &mut Violations,
) -> Option<Money> {
    Money::positive_from_proto(field, m, v)
}

pub(super) fn optional_amount(
    field: &str,
    m: Option<&ta_proto::common::Money>,
    v: &mut Violations,
) -> Option<Money> {
    m.and_then(|m| positive(field, Some(m), v))
}

pub(super) fn schedule(
    field: &str,
    payments: &[pb::ScheduledPayment],
    v: &mut Violations,
) -> Vec<(String, Money, OffsetDateTime)> {
    if payments.is_empty() {
        v.add(field, "needs at least one scheduled payment");
    }
    let mut out = Vec::new();
    for (i, p) in payments.iter().enumerate() {
        let milestone = reference(&format!("{field}[{i}].milestone_id"), &p.milestone_id, v);
        let amount = positive(&format!("{field}[{i}].amount"), p.amount.as_ref(), v);
        let due = p.due_at.as_ref().and_then(timestamps::from_proto);
        if due.is_none() {
            v.add(format!("{field}[{i}].due_at"), "is required");
        }
        if let (Some(amount), Some(due)) = (amount, due) {
            out.push((milestone, amount, due));
        }
    }
    out
}

/// The hold deadline of a request: in the future and after the last due
/// date of `schedule`; `required` when unset is a violation (otherwise it
/// keeps the current one).
pub(super) fn hold_until(
    at: Option<&prost_types::Timestamp>,
    schedule: &[(String, Money, OffsetDateTime)],
    required: bool,
    now: OffsetDateTime,
    v: &mut Violations,
) -> Option<OffsetDateTime> {
    let Some(at) = at else {
        if required {
            v.add("hold_until", "is required");
        }
        return None;
    };
    let Some(at) = timestamps::from_proto(at) else {
        v.add("hold_until", "is not a valid timestamp");
        return None;
    };
    let last_due = schedule.iter().map(|(_, _, due)| *due).max();
    match hold_until_problem(at, last_due, now) {
        Some(problem) => {
            v.add("hold_until", problem);
            None
        }
        None => Some(at),
    }
}

pub(super) fn settles(purpose: Option<&pb::Purpose>, v: &mut Violations) -> Option<Settles> {
    use pb::purpose::Purpose as P;
    match purpose.and_then(|p| p.purpose.as_ref()) {
        None => {
            v.add("purpose", "is required");
            None
        }
        Some(P::MilestoneId(m)) => {
            Some(Settles::Milestone(reference("purpose.milestone_id", m, v)))
        }
        Some(P::Acceptance(true)) => Some(Settles::Acceptance),
        Some(P::Cancellation(true)) => Some(Settles::Cancellation),
        Some(P::ClaimId(c)) => Some(Settles::Claim(reference("purpose.claim_id", c, v))),
        Some(P::Acceptance(false)) => {
            v.add("purpose.acceptance", "must be true when set");
            None
        }
        Some(P::Cancellation(false)) => {
            v.add("purpose.cancellation", "must be true when set");
            None
        }
        Some(P::AmendmentVersion(_)) => {
            v.add(
                "purpose.amendment_version",
                "is the purpose AmendEscrowSchedule sets itself",
            );
            None
        }
    }
}

/// An optional `currency_code`: unset is `None`.
pub(super) fn optional_currency(code: &str, v: &mut Violations) -> Option<Currency> {
    if code.is_empty() {
        return None;
    }
    let c = Currency::parse(code);
    if c.is_none() {
        v.add(
            "currency_code",
            "must be an ISO 4217 currency code such as USD",
        );
    }
    c
}

/// ListEscrowAccounts: the filters asked for (the caller's scope is
/// app's to add).
pub(super) fn account_filter(
    req: &pb::ListEscrowAccountsRequest,
    v: &mut Violations,
) -> AccountFilter {
    let optional = |field: &str, value: &str, v: &mut Violations| {
        (!value.is_empty()).then(|| reference(field, value, v))
    };
    let mut statuses = Vec::new();
    for (i, status) in req.statuses.iter().enumerate() {
        match pb::EscrowAccountStatus::try_from(*status) {
            Ok(pb::EscrowAccountStatus::AwaitingFunding) => {
                statuses.push(AccountStatus::AwaitingFunding)
            }
            Ok(pb::EscrowAccountStatus::PartiallyFunded) => {
                statuses.push(AccountStatus::PartiallyFunded)
            }
            Ok(pb::EscrowAccountStatus::Funded) => statuses.push(AccountStatus::Funded),
            Ok(pb::EscrowAccountStatus::Closed) => statuses.push(AccountStatus::Closed),
            _ => v.add(format!("statuses[{i}]"), "is not an escrow account status"),
        }
    }
    let created_after = timestamps::parse_optional("created_after", req.created_after.as_ref(), v);
    let created_before =
        timestamps::parse_optional("created_before", req.created_before.as_ref(), v);
    if let (Some(after), Some(before)) = (created_after, created_before)
        && after > before
    {
        v.add("created_after", "must not be after created_before");
    }
    AccountFilter {
        buyer_principal_id: optional("buyer_principal_id", &req.buyer_principal_id, v),
        supplier_owner_principal_id: None,
        supplier_id: optional("supplier_id", &req.supplier_id, v),
        contract_id: optional("contract_id", &req.contract_id, v),
        statuses,
        currency: optional_currency(&req.currency_code, v),
        created_after,
        created_before,
        holding_money: req.holding_money,
    }
}

/// ListGatewayTransfers: the filters asked for.
pub(super) fn transfer_filter(
    req: &pb::ListGatewayTransfersRequest,
    v: &mut Violations,
) -> (
    Option<&'static str>,
    Option<&'static str>,
    Option<&'static [&'static str]>,
) {
    let direction = match pb::GatewayTransferDirection::try_from(req.direction) {
        Ok(pb::GatewayTransferDirection::Unspecified) => None,
        Ok(pb::GatewayTransferDirection::Payout) => Some("payout"),
        Ok(pb::GatewayTransferDirection::BuyerRefund) => Some("buyer_refund"),
        Ok(pb::GatewayTransferDirection::SuspenseRefund) => Some("suspense_refund"),
        Err(_) => {
            v.add("direction", "is not a transfer direction");
            None
        }
    };
    let status = match pb::GatewayTransferStatus::try_from(req.status) {
        Ok(pb::GatewayTransferStatus::Unspecified) => None,
        Ok(pb::GatewayTransferStatus::Pending) => Some("pending"),
        Ok(pb::GatewayTransferStatus::Paid) => Some("paid"),
        Ok(pb::GatewayTransferStatus::Failed) => Some("failed"),
        Ok(pb::GatewayTransferStatus::Sending) => Some("sending"),
        Ok(pb::GatewayTransferStatus::Unknown) => Some("unknown"),
        Err(_) => {
            v.add("status", "is not a transfer status");
            None
        }
    };
    let kind: Option<&'static [&'static str]> = match pb::GatewayTransferKind::try_from(req.kind) {
        Ok(pb::GatewayTransferKind::Unspecified) => None,
        Ok(pb::GatewayTransferKind::Payout) => Some(&["payout"]),
        Ok(pb::GatewayTransferKind::Refund) => Some(&["buyer_refund", "suspense_refund"]),
        Err(_) => {
            v.add("kind", "is not a transfer kind");
            None
        }
    };
    if !req.reference.is_empty() {
        validate_reference("reference", &req.reference, v);
    }
    (direction, status, kind)
}

pub(super) fn invalid() -> ServiceError {
    ServiceError::InvalidArgument(Vec::new())
}

pub(super) fn claim_command(
    account: &str,
    claim: &str,
    reason: &str,
    v: &mut Violations,
) -> Result<ClaimCommand, ServiceError> {
    Ok(ClaimCommand {
        account_id: parse_id("escrow_account_id", account, v),
        claim_id: reference("claim_id", claim, v),
        reason: require_text("reason", reason, MAX_REASON, v),
    })
}

fn outflow(
    account: &str,
    amount: Option<&ta_proto::common::Money>,
    reason: &str,
    purpose: Option<&pb::Purpose>,
    v: &mut Violations,
) -> Result<Outflow, ServiceError> {
    let account_id = parse_id("escrow_account_id", account, v);
    let amount = optional_amount("amount", amount, v);
    let reason = require_text("reason", reason, MAX_REASON, v);
    let settles = settles(purpose, v).ok_or_else(invalid)?;
    Ok(Outflow {
        account_id,
        amount,
        reason,
        settles,
    })
}

pub(super) fn page_after_seq(
    page: Option<&ta_proto::common::PageRequest>,
    v: &mut Violations,
) -> i64 {
    paging::cursor(page, "statement", v, |f| match f {
        [seq] => seq.parse().ok(),
        _ => None,
    })
    .unwrap_or(0)
}

pub(super) fn time_cursor(
    page: Option<&ta_proto::common::PageRequest>,
    kind: &str,
    v: &mut Violations,
) -> Option<(OffsetDateTime, String)> {
    paging::cursor(page, kind, v, |f| match f {
        [at, id] => {
            let nanos: i128 = at.parse().ok()?;
            Some((
                OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()?,
                (*id).to_owned(),
            ))
        }
        _ => None,
    })
}

pub(super) fn time_token(kind: &str, at: OffsetDateTime, id: &str) -> String {
    paging::token(kind, &[&at.unix_timestamp_nanos().to_string(), id])
}

pub(super) fn uuid_cursor(
    c: Option<(OffsetDateTime, String)>,
    v: &mut Violations,
) -> Option<(OffsetDateTime, Uuid)> {
    c.and_then(|(at, id)| match Uuid::parse_str(&id) {
        Ok(id) => Some((at, id)),
        Err(_) => {
            v.add("page.page_token", "is not a token this listing returned");
            None
        }
    })
}

pub(super) fn finish(v: Violations) -> Result<(), Status> {
    if v.is_empty() {
        Ok(())
    } else {
        Err(v.into_error().into())
    }
}
