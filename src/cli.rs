//! Subcommands that talk to a running server over gRPC, for people at a terminal.

use crate::proto::v1 as pb;
use crate::proto::v1::admin_client::AdminClient;
use crate::proto::v1::metering_client::MeteringClient;
use clap::{Args, Subcommand};
use std::process::ExitCode;
use tonic::transport::Channel;

#[derive(Args, Clone)]
pub struct Target {
    /// Address of a running creditd.
    #[arg(long, global = true, env = "CREDITD_SERVER", default_value = "http://127.0.0.1:50051")]
    server: String,
}

#[derive(Subcommand)]
pub enum ClientCommand {
    /// Create or show accounts.
    Account {
        #[command(subcommand)]
        command: AccountCommand,
        #[command(flatten)]
        target: Target,
    },
    /// Add credits to an account (a top-up, a promo, a correction).
    Grant {
        account_id: String,
        /// Decimal credits, e.g. 500 or 12.5.
        amount: String,
        /// plan, purchase, promo or adjustment.
        #[arg(long, default_value = "purchase")]
        kind: String,
        /// Payment or invoice id.
        #[arg(long, default_value = "")]
        reference: String,
        /// Money paid, e.g. "20.00 EUR".
        #[arg(long)]
        paid: Option<String>,
        /// Expiry (RFC 3339); default never.
        #[arg(long)]
        expires: Option<String>,
        /// Idempotency key; reuse it to retry safely. Default: a new random id.
        #[arg(long)]
        request_id: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Replace an account's limits.
    Limits {
        account_id: String,
        #[arg(long, default_value = "")]
        spending_cap: String,
        #[arg(long, default_value = "")]
        alert: String,
        /// Credits ("100") or percent of the plan allocation ("10%").
        #[arg(long, default_value = "")]
        low_balance: String,
        #[arg(long, default_value = "")]
        overdraft: String,
        #[arg(long, default_value = "")]
        user_cap: String,
        #[arg(long, default_value = "")]
        workspace_cap: String,
        /// A meter as NAME:counter:LIMIT or NAME:gauge:LIMIT; repeatable.
        #[arg(long = "meter")]
        meters: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Set or list prices.
    Price {
        #[command(subcommand)]
        command: PriceCommand,
        #[command(flatten)]
        target: Target,
    },
    /// Ask for a deduction (or, with --dry-run, what it would cost).
    Deduct {
        account_id: String,
        action: String,
        quantity: u64,
        #[arg(long, default_value = "")]
        user: String,
        #[arg(long, default_value = "")]
        workspace: String,
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        request_id: Option<String>,
        /// Metadata as KEY=VALUE; repeatable.
        #[arg(long = "meta")]
        metadata: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Show an account's balance, grants, holds and limits.
    Balance {
        account_id: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
pub enum AccountCommand {
    Create {
        account_id: String,
        #[arg(long, default_value = "")]
        name: String,
        /// Plan name; with --plan-credits gives a monthly allocation.
        #[arg(long)]
        plan: Option<String>,
        #[arg(long, default_value = "0")]
        plan_credits: String,
        /// Day of month the cycle resets (UTC).
        #[arg(long, default_value_t = 1)]
        anchor_day: u32,
        #[arg(long, default_value = "")]
        rollover_cap: String,
        #[arg(long, default_value = "")]
        spending_cap: String,
    },
    Show {
        account_id: String,
    },
}

#[derive(Subcommand)]
pub enum PriceCommand {
    Set {
        action: String,
        /// Decimal credits per unit.
        credits: String,
        #[arg(long, default_value_t = 1)]
        unit_size: u64,
        #[arg(long, default_value = "request")]
        unit_name: String,
        #[arg(long, default_value = "")]
        category: String,
        #[arg(long, default_value = "")]
        meter: String,
        /// Negotiated price for this account only.
        #[arg(long, default_value = "")]
        account: String,
    },
    List {
        #[arg(long, default_value = "")]
        account: String,
    },
}

pub async fn run(command: ClientCommand) -> ExitCode {
    match execute(command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

type Outcome = Result<(), String>;

async fn channel(target: &Target) -> Result<Channel, String> {
    Channel::from_shared(target.server.clone())
        .map_err(|e| format!("--server {}: {e}", target.server))?
        .connect()
        .await
        .map_err(|e| format!("cannot reach creditd at {}: {e}. Is `creditd serve` running?", target.server))
}

fn status(e: tonic::Status) -> String {
    format!("{:?}: {}", e.code(), e.message())
}

fn new_request_id() -> String {
    format!("cli-{:016x}", rand::random::<u64>())
}

async fn execute(command: ClientCommand) -> Outcome {
    match command {
        ClientCommand::Account { command, target } => {
            let mut admin = AdminClient::new(channel(&target).await?);
            match command {
                AccountCommand::Create {
                    account_id,
                    name,
                    plan,
                    plan_credits,
                    anchor_day,
                    rollover_cap,
                    spending_cap,
                } => {
                    let plan = plan.map(|name| pb::Plan {
                        name,
                        credits_per_cycle: plan_credits,
                        cycle_anchor_day: anchor_day,
                        rollover_cap,
                        price: None,
                    });
                    let req = pb::CreateAccountRequest {
                        request_id: new_request_id(),
                        account_id,
                        display_name: name,
                        plan,
                        limits: Some(pb::Limits { spending_cap, ..Default::default() }),
                        ..Default::default()
                    };
                    let a = admin.create_account(req).await.map_err(status)?.into_inner();
                    println!("created account {}", a.account_id);
                    print_account(&a);
                }
                AccountCommand::Show { account_id } => {
                    let a = admin
                        .get_account(pb::GetAccountRequest { account_id: account_id.clone() })
                        .await
                        .map_err(status)?
                        .into_inner();
                    print_account(&a);
                    let mut metering = MeteringClient::new(channel(&target).await?);
                    let b =
                        metering.get_balance(pb::GetBalanceRequest { account_id }).await.map_err(status)?.into_inner();
                    print_balance(&b);
                }
            }
        }
        ClientCommand::Grant { account_id, amount, kind, reference, paid, expires, request_id, target } => {
            let kind = match kind.as_str() {
                "plan" => pb::GrantKind::Plan,
                "purchase" => pb::GrantKind::Purchase,
                "promo" => pb::GrantKind::Promo,
                "adjustment" => pb::GrantKind::Adjustment,
                other => return Err(format!("--kind {other:?}: use plan, purchase, promo or adjustment")),
            };
            let money_paid = paid
                .map(|p| match p.split_once(' ') {
                    Some((amount, currency)) => Ok(pb::Money { amount: amount.into(), currency: currency.into() }),
                    None => Err(format!("--paid {p:?}: expected an amount and a currency, e.g. \"20.00 EUR\"")),
                })
                .transpose()?;
            let expires_at = expires
                .map(|e| {
                    chrono::DateTime::parse_from_rfc3339(&e)
                        .map(|t| crate::api::convert::timestamp(t.with_timezone(&chrono::Utc)))
                        .map_err(|err| format!("--expires {e:?}: {err}"))
                })
                .transpose()?;
            let mut admin = AdminClient::new(channel(&target).await?);
            let req = pb::GrantCreditsRequest {
                request_id: request_id.unwrap_or_else(new_request_id),
                account_id,
                kind: kind as i32,
                amount,
                external_reference: reference,
                money_paid,
                expires_at,
                ..Default::default()
            };
            let r = admin.grant_credits(req).await.map_err(status)?.into_inner();
            let g = r.grant.unwrap_or_default();
            println!(
                "granted {} credits as {} ({}){}",
                g.amount,
                g.grant_id,
                kind.as_str_name(),
                if r.replayed { " [replayed]" } else { "" }
            );
            println!("balance: {}", r.balance);
        }
        ClientCommand::Limits {
            account_id,
            spending_cap,
            alert,
            low_balance,
            overdraft,
            user_cap,
            workspace_cap,
            meters,
            target,
        } => {
            let meters = meters
                .iter()
                .map(|m| {
                    let parts: Vec<&str> = m.split(':').collect();
                    let kind = match parts.get(1) {
                        Some(&"counter") => pb::MeterKind::CycleCounter,
                        Some(&"gauge") => pb::MeterKind::Gauge,
                        _ => return Err(format!("--meter {m:?}: expected NAME:counter:LIMIT or NAME:gauge:LIMIT")),
                    };
                    let limit = parts
                        .get(2)
                        .and_then(|l| l.parse().ok())
                        .ok_or_else(|| format!("--meter {m:?}: LIMIT must be a whole number"))?;
                    Ok(pb::MeterLimit { name: parts[0].into(), kind: kind as i32, limit })
                })
                .collect::<Result<Vec<_>, String>>()?;
            let limits = pb::Limits {
                spending_cap,
                alert_threshold: alert,
                low_balance_threshold: low_balance,
                overdraft_limit: overdraft,
                default_user_cap: user_cap,
                default_workspace_cap: workspace_cap,
                meters,
                ..Default::default()
            };
            let mut admin = AdminClient::new(channel(&target).await?);
            let a = admin
                .set_limits(pb::SetLimitsRequest { request_id: new_request_id(), account_id, limits: Some(limits) })
                .await
                .map_err(status)?
                .into_inner();
            println!("limits of {} updated", a.account_id);
            print_account(&a);
        }
        ClientCommand::Price { command, target } => {
            let mut admin = AdminClient::new(channel(&target).await?);
            match command {
                PriceCommand::Set { action, credits, unit_size, unit_name, category, meter, account } => {
                    let entry = pb::PriceEntry {
                        action: action.clone(),
                        category,
                        unit_name,
                        unit_size,
                        credits_per_unit: credits,
                        meter,
                    };
                    let r = admin
                        .upsert_prices(pb::UpsertPricesRequest {
                            request_id: new_request_id(),
                            account_id: account,
                            entries: vec![entry],
                            remove_actions: vec![],
                        })
                        .await
                        .map_err(status)?
                        .into_inner();
                    println!("price of {action} set (price book version {})", r.version);
                }
                PriceCommand::List { account } => {
                    let r = admin
                        .list_prices(pb::ListPricesRequest { account_id: account })
                        .await
                        .map_err(status)?
                        .into_inner();
                    println!("price book version {}", r.version);
                    println!(
                        "{:<28} {:<10} {:>14} {:>10}  {:<12} meter",
                        "action", "category", "credits/unit", "unit size", "unit"
                    );
                    for e in r.entries {
                        println!(
                            "{:<28} {:<10} {:>14} {:>10}  {:<12} {}",
                            e.action, e.category, e.credits_per_unit, e.unit_size, e.unit_name, e.meter
                        );
                    }
                }
            }
        }
        ClientCommand::Deduct {
            account_id,
            action,
            quantity,
            user,
            workspace,
            dry_run,
            request_id,
            metadata,
            target,
        } => {
            let metadata = metadata
                .iter()
                .map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .ok_or_else(|| format!("--meta {kv:?}: expected KEY=VALUE"))
                })
                .collect::<Result<_, String>>()?;
            let mut metering = MeteringClient::new(channel(&target).await?);
            let req = pb::CheckAndDeductRequest {
                request_id: request_id.unwrap_or_else(new_request_id),
                account_id,
                user_id: user,
                workspace_id: workspace,
                action,
                quantity,
                metadata,
                dry_run,
                deny_as_error: false,
            };
            let r = metering.check_and_deduct(req).await.map_err(status)?.into_inner();
            let decision = pb::Decision::try_from(r.decision).unwrap_or_default();
            if decision == pb::Decision::Allowed {
                println!(
                    "{}: {} credits{}",
                    if dry_run { "would be allowed" } else { "allowed" },
                    r.credits_charged,
                    if r.replayed { " [replayed]" } else { "" }
                );
                for a in &r.allocations {
                    println!(
                        "  from {} ({}): {}",
                        a.grant_id,
                        pb::GrantKind::try_from(a.grant_kind).unwrap_or_default().as_str_name(),
                        a.credits
                    );
                }
            } else {
                let reason = pb::DenialReason::try_from(r.denial_reason).unwrap_or_default();
                println!(
                    "denied: {}{}",
                    reason.as_str_name(),
                    if r.denied_meter.is_empty() { String::new() } else { format!(" ({})", r.denied_meter) }
                );
            }
            println!("balance: {}   cycle spend: {}", r.balance, r.cycle_spend);
            if !r.ledger_entry_id.is_empty() {
                println!("ledger entry: {}", r.ledger_entry_id);
            }
        }
        ClientCommand::Balance { account_id, target } => {
            let mut metering = MeteringClient::new(channel(&target).await?);
            let b = metering.get_balance(pb::GetBalanceRequest { account_id }).await.map_err(status)?.into_inner();
            print_balance(&b);
        }
    }
    Ok(())
}

fn print_account(a: &pb::Account) {
    println!(
        "account:      {} {}",
        a.account_id,
        if a.display_name.is_empty() { String::new() } else { format!("({})", a.display_name) }
    );
    println!("status:       {}", pb::AccountStatus::try_from(a.status).unwrap_or_default().as_str_name());
    if let Some(p) = &a.plan {
        println!(
            "plan:         {} — {} credits per cycle, resets on day {} ({})",
            p.name,
            p.credits_per_cycle,
            p.cycle_anchor_day,
            pb::SubscriptionStatus::try_from(a.subscription_status).unwrap_or_default().as_str_name()
        );
    }
    if let (Some(s), Some(e)) = (&a.cycle_start, &a.cycle_end) {
        println!("cycle:        {} → {}", fmt_ts(s), fmt_ts(e));
    }
    if let Some(l) = &a.limits {
        if !l.spending_cap.is_empty() {
            println!("spending cap: {}", l.spending_cap);
        }
        if !l.alert_threshold.is_empty() {
            println!("alert at:     {}", l.alert_threshold);
        }
        for m in &l.meters {
            println!("meter:        {} ≤ {}", m.name, m.limit);
        }
    }
}

fn print_balance(b: &pb::GetBalanceResponse) {
    println!(
        "balance:      {}  (free {}, purchased {}, held {})",
        b.balance, b.free_remaining, b.purchased_remaining, b.held
    );
    println!(
        "cycle spend:  {}{}",
        b.cycle_spend,
        if b.spending_cap.is_empty() { String::new() } else { format!(" of cap {}", b.spending_cap) }
    );
    for g in &b.grants {
        println!(
            "  grant {} {:<10} {:>12} left of {:>12}{}",
            g.grant_id,
            pb::GrantKind::try_from(g.kind)
                .unwrap_or_default()
                .as_str_name()
                .trim_start_matches("GRANT_KIND_")
                .to_lowercase(),
            g.remaining,
            g.amount,
            g.expires_at.as_ref().map(|t| format!(", expires {}", fmt_ts(t))).unwrap_or_default()
        );
    }
    for h in &b.holds {
        println!("  hold {} {} credits for {}", h.reservation_id, h.credits_held, h.action);
    }
    for m in &b.meters {
        println!("  meter {}: {} of {}", m.name, m.used, m.limit);
    }
}

fn fmt_ts(t: &prost_types::Timestamp) -> String {
    chrono::DateTime::from_timestamp(t.seconds, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default()
}
