//! Secrets kept out of what is shown (logs, `/info`): a connection URL loses
//! its password, wherever the URL puts it.

/// `scheme://user:password@host/…?password=…` with every password replaced
/// by `***`. The user info ends at the last `@` before the query, so a
/// password holding `@` or `/` is hidden whole; `password` and `sslpassword`
/// query parameters are hidden too.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let mut shown = format!("{scheme}://");
    match before_query.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            let password = if userinfo.contains(':') { ":***" } else { "" };
            shown.push_str(&format!("{user}{password}@{host}"));
        }
        None => shown.push_str(before_query),
    }
    if let Some(query) = query {
        let params: Vec<String> = query
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((key, _))
                    if key.eq_ignore_ascii_case("password")
                        || key.eq_ignore_ascii_case("sslpassword") =>
                {
                    format!("{key}=***")
                }
                _ => param.to_owned(),
            })
            .collect();
        shown.push('?');
        shown.push_str(&params.join("&"));
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_password_is_hidden_and_nothing_else() {
        for (url, shown) in [
            (
                "postgres://app:s3cr@t@db:5432/notify?sslmode=require",
                "postgres://app:***@db:5432/notify?sslmode=require",
            ),
            (
                "postgres://app:p@ss/w@rd@db/notify",
                "postgres://app:***@db/notify",
            ),
            (
                "postgres://app@db/notify?password=s3cret&sslmode=require",
                "postgres://app@db/notify?password=***&sslmode=require",
            ),
            (
                "postgres://db/notify?user=app&PASSWORD=s3cret",
                "postgres://db/notify?user=app&PASSWORD=***",
            ),
            ("postgres://u@h/db", "postgres://u@h/db"),
            ("http://svc-a:50051", "http://svc-a:50051"),
            ("sqlite:.notify/notify.db", "sqlite:.notify/notify.db"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }
}
