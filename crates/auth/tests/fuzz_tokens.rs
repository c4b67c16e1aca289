//! Property tests of token verification (stable-Rust stand-in for
//! cargo-fuzz): arbitrary text, any one-character change to a good token,
//! arbitrary headers and arbitrarily typed claims signed with the real key
//! never panic, and nothing but a well-formed, correctly signed, in-date
//! token of the right issuer and client is accepted. JWKS documents of any
//! shape are refused or parsed, never a panic.
//!
//! More cases on demand: `PROPTEST_CASES=100000 cargo nextest run -E 'binary(/^fuzz_/)'`.

use std::{sync::OnceLock, time::Duration};

use base64::Engine;
use notify_auth::{DevIssuer, DevToken, KeySet, KeySource, Verifier, VerifierConfig};
use proptest::prelude::*;
use serde_json::{Value, json};

const ISSUER: &str = "http://127.0.0.1/fuzz-pool";
const CLIENT: &str = "fuzz-app";

/// One RSA key for every case: generating one per case would be the test.
fn issuer() -> &'static DevIssuer {
    static ISSUER_KEY: OnceLock<DevIssuer> = OnceLock::new();
    ISSUER_KEY.get_or_init(|| DevIssuer::generate(ISSUER, CLIENT).unwrap())
}

fn verify(token: &str) -> Result<notify_auth::Identity, notify_auth::AuthError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(issuer().verifier().verify(token))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Claim values of any JSON type.
fn claim_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,16}".prop_map(Value::String),
        prop::collection::vec(".{0,8}".prop_map(Value::String), 0..3).prop_map(Value::Array),
    ]
}

proptest! {
    #[test]
    fn arbitrary_text_is_never_a_token(text in ".{0,300}") {
        prop_assert!(verify(&text).is_err());
    }

    #[test]
    fn three_arbitrary_segments_are_never_a_token(
        head in prop::collection::vec(any::<u8>(), 0..64),
        body in prop::collection::vec(any::<u8>(), 0..128),
        sig in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let token = format!("{}.{}.{}", b64(&head), b64(&body), b64(&sig));
        prop_assert!(verify(&token).is_err());
    }

    #[test]
    fn any_one_character_change_breaks_a_good_token(at in any::<prop::sample::Index>(), to in "[A-Za-z0-9_.=+/-]") {
        let good = issuer().mint(&DevToken::access("alice")).unwrap();
        let mut bytes = good.clone().into_bytes();
        let i = at.index(bytes.len());
        bytes[i] = to.as_bytes()[0];
        let changed = String::from_utf8(bytes).unwrap();
        prop_assume!(changed != good);
        prop_assert!(verify(&changed).is_err(), "accepted with byte {} changed", i);
    }

    #[test]
    fn any_header_but_rs256_with_our_kid_is_refused(
        alg in prop_oneof![Just(json!("RS256")), Just(json!("none")), Just(json!("HS256")), claim_value()],
        kid in prop_oneof![Just(json!(issuer().kid())), claim_value()],
        typ in claim_value(),
    ) {
        let good = issuer().mint(&DevToken::access("alice")).unwrap();
        let (_, rest) = good.split_once('.').unwrap();
        let header = json!({"alg": alg, "kid": kid, "typ": typ});
        let token = format!("{}.{rest}", b64(header.to_string().as_bytes()));
        let result = verify(&token);
        // The signature covers the header: any change to it fails, whatever it says.
        prop_assert!(result.is_err(), "{}", header);
    }

    #[test]
    fn claims_of_any_type_signed_with_the_real_key_are_checked_not_trusted(
        sub in prop_oneof![2 => Just(json!("alice")), 1 => claim_value()],
        exp in prop_oneof![2 => Just(json!(now() + 600)), 1 => claim_value()],
        token_use in prop_oneof![2 => Just(json!("access")), 1 => claim_value()],
        client_id in prop_oneof![2 => Just(json!(CLIENT)), 1 => claim_value()],
        scope in claim_value(), groups in claim_value(), realm in claim_value(),
    ) {
        let claims = json!({
            "iss": ISSUER, "iat": now(), "sub": sub, "exp": exp, "token_use": token_use,
            "client_id": client_id, "scope": scope, "cognito:groups": groups, "custom:realm": realm,
        });
        let token = issuer().sign(&claims).unwrap();
        if let Ok(identity) = verify(&token) {
            // Accepted only with every rule met.
            prop_assert_eq!(Some(identity.user.as_str()), claims["sub"].as_str());
            prop_assert!(claims["exp"].as_u64().is_some_and(|e| e + 5 >= now()));
            prop_assert_eq!(claims["token_use"].as_str(), Some("access"));
            prop_assert_eq!(claims["client_id"].as_str(), Some(CLIENT));
        }
    }

    #[test]
    fn any_jwks_document_is_parsed_or_refused(doc in prop_oneof![
        ".{0,200}",
        prop::collection::vec(
            (prop_oneof![Just(json!("RSA")), claim_value()], claim_value(), claim_value(), claim_value(), claim_value()),
            0..4,
        ).prop_map(|keys| json!({"keys": keys.into_iter().map(|(kty, kid, n, e, alg)|
            json!({"kty": kty, "kid": kid, "n": n, "e": e, "alg": alg, "use": "sig"})).collect::<Vec<_>>()}).to_string()),
    ]) {
        let verifier = Verifier::new(
            KeySet::new(KeySource::Inline(doc)),
            VerifierConfig { issuer: ISSUER.into(), client_ids: vec![CLIENT.into()], leeway: Duration::from_secs(5) },
        );
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let token = issuer().mint(&DevToken::access("alice")).unwrap();
        // None of these documents holds our key.
        prop_assert!(runtime.block_on(verifier.verify(&token)).is_err());
    }
}
