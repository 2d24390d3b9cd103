//! Topic names, topic filters and how they match (MQTT 5.0 section 4.7, 3.1.1 section 4.7).
//!
//! These rules are shared by the codec (which rejects what the spec forbids) and by the
//! router (which matches), so they live in one place with their tests.

/// Why a topic name or filter was refused; the codec turns this into a reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicError {
    Empty,
    WildcardInName,
    MisplacedWildcard,
    BadSharedGroup,
}

impl TopicError {
    pub fn describe(self) -> &'static str {
        match self {
            TopicError::Empty => "topic is empty",
            TopicError::WildcardInName => "topic name contains a wildcard (+ or #)",
            TopicError::MisplacedWildcard => {
                "topic filter has a wildcard that does not fill a whole level, or # that is not last"
            }
            TopicError::BadSharedGroup => {
                "shared subscription needs $share/GROUP/FILTER with a group free of + # /"
            }
        }
    }
}

/// A topic name as used in PUBLISH: no wildcards, at least one character.
pub fn validate_name(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// A topic filter as used in SUBSCRIBE and UNSUBSCRIBE, shared-subscription form included.
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    match parse_shared(filter) {
        Some(Ok((_, inner))) => validate_plain_filter(inner),
        Some(Err(e)) => Err(e),
        None => validate_plain_filter(filter),
    }
}

fn validate_plain_filter(filter: &str) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let is_last = levels.peek().is_none();
        match level {
            "#" if is_last => {}
            "+" => {}
            _ if level.bytes().any(|b| b == b'+' || b == b'#') => {
                return Err(TopicError::MisplacedWildcard);
            }
            _ => {}
        }
    }
    Ok(())
}

/// Splits `$share/group/filter` into `(group, filter)`. `None` means not a shared filter.
pub fn parse_shared(filter: &str) -> Option<Result<(&str, &str), TopicError>> {
    let rest = filter.strip_prefix("$share/")?;
    let Some((group, inner)) = rest.split_once('/') else {
        return Some(Err(TopicError::BadSharedGroup));
    };
    if group.is_empty() || group.bytes().any(|b| b == b'+' || b == b'#') {
        return Some(Err(TopicError::BadSharedGroup));
    }
    if inner.is_empty() {
        return Some(Err(TopicError::Empty));
    }
    Some(Ok((group, inner)))
}

/// Whether `filter` (not a shared one) matches the topic name `topic`.
/// Filters that start with a wildcard never match topics that start with `$`.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("a/b").is_ok());
        assert!(validate_name("/").is_ok());
        assert_eq!(validate_name(""), Err(TopicError::Empty));
        assert_eq!(validate_name("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(validate_name("a/#"), Err(TopicError::WildcardInName));
    }

    #[test]
    fn filters() {
        for ok in [
            "#",
            "+",
            "a/+/c",
            "a/#",
            "+/+",
            "/+",
            "sport/tennis/#",
            "$SYS/#",
        ] {
            assert!(validate_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/#/c", "a#", "a/b+", "sport+", "#/a", "a/+b"] {
            assert!(validate_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shared_filters() {
        assert_eq!(parse_shared("$share/g/a/+"), Some(Ok(("g", "a/+"))));
        assert_eq!(parse_shared("a/b"), None);
        assert!(validate_filter("$share/g/#").is_ok());
        assert!(validate_filter("$share//a").is_err());
        assert!(validate_filter("$share/g+/a").is_err());
        assert!(validate_filter("$share/g").is_err());
        assert!(validate_filter("$share/g/").is_err());
    }

    #[test]
    fn spec_matching_examples() {
        // MQTT 5.0 section 4.7.1.2 and 4.7.1.3.
        assert!(matches("sport/tennis/player1/#", "sport/tennis/player1"));
        assert!(matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1/ranking"
        ));
        assert!(matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1/score/wimbledon"
        ));
        assert!(matches("sport/#", "sport"));
        assert!(matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(!matches("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(matches("sport/+", "sport/"));
        assert!(!matches("sport/+", "sport"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        assert!(matches("#", "a/b/c"));
    }

    #[test]
    fn dollar_topics_not_matched_by_leading_wildcards() {
        assert!(!matches("#", "$SYS/broker"));
        assert!(!matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/#", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
    }
}
