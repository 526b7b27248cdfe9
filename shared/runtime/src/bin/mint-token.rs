//! `mint-token`: prints a bearer token for local development and tests:
//! HS256 with the dev secret, or RS256 with a private key and its `kid`.
//! The dev secret published with the source code is refused unless
//! `AUTH_DEV_MODE=true` (as `make token` sets it).
//!
//! ```text
//! AUTH_DEV_MODE=true AUTH_JWT_HS256_SECRET=... mint-token --subject buyer-1 --role buyer --ttl 30m
//! AUTH_DEV_MODE=true AUTH_JWT_HS256_SECRET=... mint-token --subject contract --role service --audience escrow
//! mint-token --subject fin-1 --role finance --signing-key-file key.pem --kid ops-2026
//! ```
//!
//! Only the token goes to stdout; errors go to stderr with exit code 2.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ta_runtime::auth::{AuthConfig, DEFAULT_ISSUER, PLATFORM_AUDIENCE, Role, TokenIssuer};

/// Mint a bearer token for Trade Assurance services.
#[derive(Parser)]
#[command(name = "mint-token", version)]
struct Cli {
    /// Subject (`sub` claim): the user, supplier or service id.
    #[arg(long)]
    subject: String,

    /// Role (`role` claim).
    #[arg(long, value_enum, ignore_case = true)]
    role: Role,

    /// Lifetime of the token: a number with an optional s, m, h or d suffix
    /// (seconds by default).
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    ttl: Duration,

    /// Shared HS256 secret, at least 16 bytes (prefer the environment
    /// variable over the flag, which shows up in the process list).
    #[arg(
        long = "auth-jwt-hs256-secret",
        env = "AUTH_JWT_HS256_SECRET",
        hide_env_values = true,
        value_name = "SECRET",
        required_unless_present = "signing_key_file"
    )]
    secret: Option<String>,

    /// Accept the development secret published with the source code
    /// (`make token` sets it); without it, that secret is refused.
    #[arg(long = "auth-dev-mode", env = "AUTH_DEV_MODE", default_value_t = false,
          action = clap::ArgAction::Set)]
    dev_mode: bool,

    /// Sign with RS256 and this PEM private key instead (needs --kid).
    #[arg(
        long,
        value_name = "PEM_FILE",
        requires = "kid",
        conflicts_with = "secret"
    )]
    signing_key_file: Option<std::path::PathBuf>,

    /// The `kid` under which the services' JWK set publishes the key.
    #[arg(long)]
    kid: Option<String>,

    /// `iss` claim; must match the services' AUTH_JWT_ISSUER.
    #[arg(long = "auth-jwt-issuer", env = "AUTH_JWT_ISSUER", default_value = DEFAULT_ISSUER)]
    issuer: String,

    /// `aud` claim: the platform audience for people; for a service token,
    /// the called service's name (e.g. escrow), which it then requires.
    #[arg(long, default_value = PLATFORM_AUDIENCE)]
    audience: String,

    /// The services' longest accepted token lifetime: a --ttl beyond it is
    /// refused here, since the services would refuse the token.
    #[arg(long = "auth-jwt-max-lifetime", env = "AUTH_JWT_MAX_LIFETIME", default_value = "1h",
          value_parser = parse_ttl)]
    max_lifetime: Duration,
}

/// `90`, `90s`, `15m`, `8h`, `7d` (the services' duration syntax); zero is refused.
fn parse_ttl(text: &str) -> Result<Duration, String> {
    match ta_runtime::config::parse_duration(text)? {
        ttl if ttl.is_zero() => Err("the ttl must be positive".to_owned()),
        ttl => Ok(ttl),
    }
}

fn main() -> ExitCode {
    // Usage errors (unknown role, bad ttl, missing secret, ...) exit with 2.
    let cli = Cli::parse();
    if cli.role == Role::Service && cli.audience == PLATFORM_AUDIENCE {
        eprintln!(
            "mint-token: a service token names the service it calls: add --audience <service>, \
             e.g. --audience supplier-registry"
        );
        return ExitCode::from(2);
    }
    if cli.ttl > cli.max_lifetime {
        eprintln!(
            "mint-token: --ttl {} is longer than AUTH_JWT_MAX_LIFETIME ({}), the longest lifetime \
             the services accept",
            humantime::format_duration(cli.ttl),
            humantime::format_duration(cli.max_lifetime)
        );
        return ExitCode::from(2);
    }
    let issuer = match (&cli.signing_key_file, cli.kid) {
        (Some(path), Some(kid)) => TokenIssuer::rs256_from_file(path, kid, cli.issuer),
        _ => {
            let config = AuthConfig {
                issuer: cli.issuer,
                hs256_secret: cli.secret,
                dev_mode: cli.dev_mode,
                ..AuthConfig::default()
            };
            config
                .check_development_secret()
                .and_then(|()| TokenIssuer::from_config(&config))
                .map_err(|err| err.to_string())
        }
    };
    let token = issuer.and_then(|issuer| {
        issuer
            .mint(&cli.subject, cli.role, &cli.audience, cli.ttl)
            .map_err(|err| err.to_string())
    });
    match token {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("mint-token: {message}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_units() {
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(604_800)));
        for bad in ["", "h", "0s", "-1h", "1x", "99999999999999999999d"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cli_is_well_formed() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }
}
