//! The settings that build a [`Verifier`] and a [`CognitoConfig`], as arg
//! groups a binary flattens: the bridge verifies users' tokens (`AUTH_*`),
//! notify-svc verifies M2M callers (`NOTIFY_AUTH_*`) and panel admins
//! (`NOTIFY_USERS_*`) — one group, three sets of names.

use std::{marker::PhantomData, path::PathBuf, time::Duration};

use notify_core::setting::Setting;

use crate::{CognitoConfig, KeySet, KeySource, Verifier, VerifierConfig};

/// The names one verifier's settings go by.
pub trait VerifierNames: Clone + Send + Sync + 'static {
    const JWKS_URL: Setting;
    const JWKS_CA: Setting;
    const ISSUER: Setting;
    const CLIENT_IDS: Setting;
}

/// Clock skew allowed on `exp`/`iat`: hosts in one region agree within this.
const LEEWAY: Duration = Duration::from_secs(5);

/// A token verifier's settings: all of JWKS, issuer and app clients, or none.
#[derive(Debug, Clone, clap::Args)]
#[group(skip)]
pub struct VerifierArgs<N: VerifierNames> {
    /// JWKS of the token issuer: https://… (Cognito's
    /// `/.well-known/jwks.json`), http://… or file:PATH.
    #[arg(id = N::JWKS_URL.env, long = N::JWKS_URL.long, env = N::JWKS_URL.env, value_name = "URL")]
    pub jwks_url: Option<String>,
    /// CA (PEM) to trust for an https:// JWKS instead of the system's roots.
    #[arg(id = N::JWKS_CA.env, long = N::JWKS_CA.long, env = N::JWKS_CA.env, value_name = "PEM")]
    pub jwks_ca: Option<PathBuf>,
    /// Expected `iss` of tokens (`https://cognito-idp.REGION.amazonaws.com/POOL`).
    #[arg(id = N::ISSUER.env, long = N::ISSUER.long, env = N::ISSUER.env, value_name = "ISS")]
    pub issuer: Option<String>,
    /// App clients whose tokens are accepted, comma separated.
    #[arg(id = N::CLIENT_IDS.env, long = N::CLIENT_IDS.long, env = N::CLIENT_IDS.env, value_name = "IDS", value_delimiter = ',')]
    pub client_ids: Vec<String>,
    #[arg(skip)]
    names: PhantomData<N>,
}

impl<N: VerifierNames> VerifierArgs<N> {
    /// The verifier, None when nothing is set; a half-set group is an error
    /// naming what is missing.
    pub fn verifier(&self) -> Result<Option<Verifier>, String> {
        self.verifier_with_ca(self.jwks_ca.clone())
    }

    /// As [`Self::verifier`], trusting `ca` for an https:// JWKS.
    pub fn verifier_with_ca(&self, ca: Option<PathBuf>) -> Result<Option<Verifier>, String> {
        let client_ids: Vec<String> = self
            .client_ids
            .iter()
            .filter(|c| !c.is_empty())
            .cloned()
            .collect();
        match (&self.jwks_url, &self.issuer) {
            (None, None) if client_ids.is_empty() => Ok(None),
            (Some(jwks), Some(issuer)) if !client_ids.is_empty() => {
                let source = KeySource::parse(jwks)
                    .and_then(|s| s.with_ca(ca))
                    .map_err(|e| format!("{}: {e}", N::JWKS_URL.env))?;
                Ok(Some(Verifier::new(
                    KeySet::new(source),
                    VerifierConfig {
                        issuer: issuer.clone(),
                        client_ids,
                        leeway: LEEWAY,
                    },
                )))
            }
            _ => Err(format!(
                "tokens need all of {}, {} and {}",
                N::JWKS_URL.env,
                N::ISSUER.env,
                N::CLIENT_IDS.env
            )),
        }
    }
}

/// The Cognito user pool a service asks what a token cannot say.
#[derive(Debug, Clone, clap::Args)]
pub struct CognitoArgs {
    /// The user pool's region (default: AWS_REGION).
    #[arg(long, env = "COGNITO_REGION")]
    pub cognito_region: Option<String>,
    /// The AWS SDK's region: the pool's when COGNITO_REGION is not set.
    #[arg(long, env = "AWS_REGION")]
    pub aws_region: Option<String>,
    /// The user pool's id (AdminGetUser/GetUser; IAM credentials from the
    /// default chain).
    #[arg(long, env = "COGNITO_USER_POOL_ID")]
    pub cognito_user_pool_id: Option<String>,
    /// Another Cognito endpoint (a local stand-in); default: AWS's.
    #[arg(long, env = "COGNITO_ENDPOINT_URL")]
    pub cognito_endpoint_url: Option<String>,
}

impl CognitoArgs {
    /// The pool, None when no pool is named; a pool without a region (or a
    /// Cognito region without a pool) is an error.
    pub fn config(&self) -> Result<Option<CognitoConfig>, String> {
        let region = self.cognito_region.as_ref().or(self.aws_region.as_ref());
        match (&self.cognito_user_pool_id, region) {
            (Some(pool), Some(region)) => Ok(Some(CognitoConfig {
                endpoint_url: self.cognito_endpoint_url.clone(),
                ..CognitoConfig::new(region, pool)
            })),
            (None, _) if self.cognito_region.is_none() => Ok(None),
            _ => Err("set COGNITO_USER_POOL_ID and COGNITO_REGION (or AWS_REGION) together".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone)]
    struct Names;
    impl VerifierNames for Names {
        const JWKS_URL: Setting = Setting::new("jwks-url", "T_JWKS_URL");
        const JWKS_CA: Setting = Setting::new("jwks-ca", "T_JWKS_CA");
        const ISSUER: Setting = Setting::new("issuer", "T_ISSUER");
        const CLIENT_IDS: Setting = Setting::new("client-ids", "T_CLIENT_IDS");
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        verifier: VerifierArgs<Names>,
        #[command(flatten)]
        cognito: CognitoArgs,
    }

    fn parse(flags: &[&str]) -> Cli {
        let argv = std::iter::once("t").chain(flags.iter().copied());
        <Cli as clap::Parser>::try_parse_from(argv).unwrap()
    }

    #[test]
    fn a_verifier_needs_all_three_settings_or_none() {
        assert!(parse(&[]).verifier.verifier().unwrap().is_none());
        let half = parse(&["--jwks-url", "file:/k.json"]).verifier.verifier();
        assert!(half.err().unwrap().contains("T_ISSUER"));
        let bad = parse(&[
            "--jwks-url",
            "ftp://x",
            "--issuer",
            "i",
            "--client-ids",
            "a",
        ]);
        assert!(
            bad.verifier
                .verifier()
                .err()
                .unwrap()
                .contains("T_JWKS_URL")
        );
        let whole = parse(&[
            "--jwks-url",
            "file:/k.json",
            "--issuer",
            "i",
            "--client-ids",
            "a,b",
        ]);
        assert!(whole.verifier.verifier().unwrap().is_some());
    }

    #[test]
    fn the_pool_region_falls_back_to_the_sdk_region() {
        assert!(parse(&[]).cognito.config().unwrap().is_none());
        assert!(
            parse(&["--aws-region", "eu-west-1"])
                .cognito
                .config()
                .unwrap()
                .is_none()
        );
        let pool = parse(&["--cognito-user-pool-id", "p", "--aws-region", "eu-west-1"]);
        assert_eq!(pool.cognito.config().unwrap().unwrap().region, "eu-west-1");
        let both = parse(&[
            "--cognito-user-pool-id",
            "p",
            "--aws-region",
            "eu-west-1",
            "--cognito-region",
            "us-east-1",
        ]);
        assert_eq!(both.cognito.config().unwrap().unwrap().region, "us-east-1");
        assert!(
            parse(&["--cognito-user-pool-id", "p"])
                .cognito
                .config()
                .is_err()
        );
        assert!(parse(&["--cognito-region", "r"]).cognito.config().is_err());
    }
}
