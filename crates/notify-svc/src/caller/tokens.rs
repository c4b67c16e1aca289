//! Static caller tokens (`NOTIFY_API_TOKENS`): each entry names a caller,
//! its rights and, for publishing, the topic namespaces it may use.

use std::collections::{BTreeSet, HashMap};

use super::{Caller, Right};

/// Static bearer tokens mapped to caller names.
#[derive(Clone, Default)]
pub struct CallerTokens {
    by_token: HashMap<String, Caller>,
}

impl CallerTokens {
    /// The callers' names (never their tokens) with their rights, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.by_token.values().map(describe).collect();
        names.sort_unstable();
        names
    }

    /// Parses `name[:right+right][@namespace|namespace]=token,…`: rights
    /// among `publish`, `admin`, `bridge` (default `publish` alone);
    /// namespaces limit the publish right to those topic namespaces.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut by_token = HashMap::new();
        for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (spec, token) = pair.split_once('=').ok_or_else(|| {
                "NOTIFY_API_TOKENS: each entry is name[:rights][@namespaces]=token".to_string()
            })?;
            let (spec, token) = (spec.trim(), token.trim());
            let caller = parse_grant(spec)?;
            if caller.name.is_empty() || token.len() < 16 {
                return Err(format!(
                    "NOTIFY_API_TOKENS: {:?} needs a name and a token of at least 16 characters",
                    caller.name
                ));
            }
            let name = caller.name.clone();
            if by_token.insert(token.to_owned(), caller).is_some() {
                return Err(format!(
                    "NOTIFY_API_TOKENS: {name:?} reuses another caller's token"
                ));
            }
        }
        Ok(Self { by_token })
    }

    pub fn is_empty(&self) -> bool {
        self.by_token.is_empty()
    }

    /// The caller a presented token names. Compares against every token in
    /// constant time per byte so the answer's timing does not leak a prefix.
    pub fn caller(&self, presented: &str) -> Option<&Caller> {
        let mut found = None;
        for (token, caller) in &self.by_token {
            if constant_time_eq(token.as_bytes(), presented.as_bytes()) {
                found = Some(caller);
            }
        }
        found
    }
}

/// `name[:right+right][@namespace|namespace]` → the caller it grants.
fn parse_grant(spec: &str) -> Result<Caller, String> {
    let (rest, namespaces) = match spec.split_once('@') {
        Some((rest, list)) => {
            let list: BTreeSet<String> = list
                .split('|')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect();
            if list.is_empty() {
                return Err(format!(
                    "NOTIFY_API_TOKENS: {spec:?} names no namespace after @"
                ));
            }
            (rest, Some(list))
        }
        None => (spec, None),
    };
    let (name, rights) = match rest.split_once(':') {
        Some((name, list)) => {
            let mut rights = Vec::new();
            for word in list.split('+').map(str::trim) {
                let right = Right::ALL
                    .into_iter()
                    .find(|r| r.name() == word)
                    .ok_or_else(|| {
                        format!(
                            "NOTIFY_API_TOKENS: {name:?} asks for right {word:?}; rights are publish, admin, bridge"
                        )
                    })?;
                if !rights.contains(&right) {
                    rights.push(right);
                }
            }
            (name.trim(), rights)
        }
        None => (rest.trim(), vec![Right::Publish]),
    };
    if namespaces.is_some() && !rights.contains(&Right::Publish) {
        return Err(format!(
            "NOTIFY_API_TOKENS: {name:?} limits namespaces but has no publish right to limit"
        ));
    }
    Ok(Caller {
        name: name.to_owned(),
        rights,
        namespaces,
    })
}

/// `name (publish+admin @ns|ns)`, as `/info` shows a caller.
fn describe(caller: &Caller) -> String {
    let rights: Vec<&str> = caller.rights.iter().map(|r| r.name()).collect();
    match &caller.namespaces {
        Some(list) => {
            let list: Vec<&str> = list.iter().map(String::as_str).collect();
            format!("{} ({} @{})", caller.name, rights.join("+"), list.join("|"))
        }
        None => format!("{} ({})", caller.name, rights.join("+")),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_map_to_callers() {
        let t = CallerTokens::parse("billing=aaaaaaaaaaaaaaaa, bets=bbbbbbbbbbbbbbbb").unwrap();
        assert_eq!(
            t.caller("bbbbbbbbbbbbbbbb").map(|c| c.name.as_str()),
            Some("bets")
        );
        assert_eq!(t.caller("bbbbbbbbbbbbbbb"), None);
        assert!(CallerTokens::parse("short=abc").is_err());
        assert!(CallerTokens::parse("noequals").is_err());
        assert!(CallerTokens::parse("").unwrap().is_empty());
    }

    #[test]
    fn token_entries_name_their_rights_and_default_to_publish() {
        let t = CallerTokens::parse(
            "shop=aaaaaaaaaaaaaaaa, ops:admin+publish=bbbbbbbbbbbbbbbb, \
             edge:bridge=cccccccccccccccc, bets:publish@fight|bet=dddddddddddddddd",
        )
        .unwrap();
        let rights = |token: &str| t.caller(token).unwrap().rights.clone();
        assert_eq!(rights("aaaaaaaaaaaaaaaa"), [Right::Publish]);
        assert_eq!(rights("bbbbbbbbbbbbbbbb"), [Right::Admin, Right::Publish]);
        assert_eq!(rights("cccccccccccccccc"), [Right::Bridge]);
        let bets = t.caller("dddddddddddddddd").unwrap();
        let namespaces: Vec<&str> = bets
            .namespaces
            .iter()
            .flatten()
            .map(String::as_str)
            .collect();
        assert_eq!(namespaces, ["bet", "fight"]);
        assert_eq!(
            t.names(),
            [
                "bets (publish @bet|fight)",
                "edge (bridge)",
                "ops (admin+publish)",
                "shop (publish)"
            ]
        );
        for bad in [
            "x:root=aaaaaaaaaaaaaaaa",
            "x:admin@ns=aaaaaaaaaaaaaaaa",
            "x@=aaaaaaaaaaaaaaaa",
            ":admin=aaaaaaaaaaaaaaaa",
        ] {
            assert!(CallerTokens::parse(bad).is_err(), "{bad} is refused");
        }
    }
}
