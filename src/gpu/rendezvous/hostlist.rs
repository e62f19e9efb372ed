//! Slurm's compressed host lists (`gpu[01-04,07],login2`), expanded in
//! Slurm's order: items left to right, each bracket's numbers in the order
//! written, zero-padded to the width of the number as written, several
//! brackets in one name as a product (the last bracket varies fastest).

/// The largest list expanded; a longer one is refused, not allocated.
const MAX_HOSTS: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostlistError {
    #[error("host list '{0}' is empty")]
    Empty(String),
    #[error("host list '{list}': {what}")]
    Malformed { list: String, what: String },
    #[error("host list '{0}' names more than {MAX_HOSTS} hosts")]
    TooLong(String),
}

/// One bracket's numbers as written: (value, width) pairs.
fn bracket(list: &str, body: &str) -> Result<Vec<String>, HostlistError> {
    let bad = |what: String| HostlistError::Malformed {
        list: list.into(),
        what,
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let mut out = Vec::new();
    for part in body.split(',') {
        let part = part.trim();
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        if !digits(lo) || !digits(hi) {
            return Err(bad(format!(
                "'[{body}]': '{part}' is not a number or a range N-M"
            )));
        }
        let parse = |s: &str| {
            s.parse::<u64>()
                .map_err(|_| bad(format!("'{s}' is too large")))
        };
        let (a, b) = (parse(lo)?, parse(hi)?);
        if a > b {
            return Err(bad(format!("range '{part}' runs backwards")));
        }
        if (b - a) as usize >= MAX_HOSTS || out.len() + (b - a) as usize >= MAX_HOSTS {
            return Err(HostlistError::TooLong(list.into()));
        }
        let width = lo.len();
        out.extend((a..=b).map(|v| format!("{v:0width$}")));
    }
    Ok(out)
}

/// One comma-free item (`rack[1-2]-gpu[01-04]`) into its hosts.
fn item(list: &str, it: &str) -> Result<Vec<String>, HostlistError> {
    let mut hosts = vec![String::new()];
    let mut rest = it;
    while !rest.is_empty() {
        let (lit, tail) = match rest.find('[') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        if lit.contains(']') {
            return Err(HostlistError::Malformed {
                list: list.into(),
                what: format!("unmatched ']' in '{it}'"),
            });
        }
        for h in &mut hosts {
            h.push_str(lit);
        }
        let Some(tail) = tail else { break };
        let Some(close) = tail.find(']') else {
            return Err(HostlistError::Malformed {
                list: list.into(),
                what: format!("unclosed '[' in '{it}'"),
            });
        };
        let nums = bracket(list, &tail[..close])?;
        if hosts.len().saturating_mul(nums.len()) > MAX_HOSTS {
            return Err(HostlistError::TooLong(list.into()));
        }
        hosts = hosts
            .iter()
            .flat_map(|h| nums.iter().map(move |n| format!("{h}{n}")))
            .collect();
        rest = &tail[close + 1..];
    }
    Ok(hosts)
}

/// Every host of a Slurm host list, in order.
pub fn expand_hostlist(list: &str) -> Result<Vec<String>, HostlistError> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in list.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err(HostlistError::Malformed {
                list: list.into(),
                what: "brackets do not pair up (nested or stray)".into(),
            });
        }
    }
    items.push(&list[start..]);
    let mut out = Vec::new();
    for it in items.into_iter().map(str::trim).filter(|s| !s.is_empty()) {
        out.extend(item(list, it)?);
        if out.len() > MAX_HOSTS {
            return Err(HostlistError::TooLong(list.into()));
        }
    }
    if out.is_empty() {
        return Err(HostlistError::Empty(list.into()));
    }
    Ok(out)
}

/// The first host of a Slurm host list (where srun puts task 0).
pub fn first_host(list: &str) -> Result<String, HostlistError> {
    Ok(expand_hostlist(list)?.swap_remove(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(s: &str) -> Vec<String> {
        expand_hostlist(s).unwrap()
    }

    #[test]
    fn compressed_lists_expand_in_slurms_order() {
        assert_eq!(
            ex("gpu[01-04,07],login2"),
            ["gpu01", "gpu02", "gpu03", "gpu04", "gpu07", "login2"]
        );
        assert_eq!(ex("node7"), ["node7"]);
        assert_eq!(ex("a,b , c"), ["a", "b", "c"]);
        assert_eq!(ex("n[8-11]"), ["n8", "n9", "n10", "n11"]);
        assert_eq!(ex("n[098-101]"), ["n098", "n099", "n100", "n101"]);
        assert_eq!(ex("r[1-2]-g[1,3]"), ["r1-g1", "r1-g3", "r2-g1", "r2-g3"]);
        assert_eq!(ex("x[5]y"), ["x5y"]);
        assert_eq!(ex("127.0.0.[1-2]"), ["127.0.0.1", "127.0.0.2"]);
        assert_eq!(first_host("gpu[01-04,07],login2").unwrap(), "gpu01");
        assert_eq!(first_host("login2,gpu[01-04]").unwrap(), "login2");
    }

    #[test]
    fn malformed_lists_are_refused() {
        for bad in [
            "gpu[01-04",
            "gpu01-04]",
            "gpu[04-01]",
            "gpu[a-b]",
            "gpu[]",
            "g[1[2]]",
            "g[1-]",
        ] {
            let e = expand_hostlist(bad).unwrap_err();
            assert!(matches!(e, HostlistError::Malformed { .. }), "{bad}: {e}");
        }
        assert_eq!(
            expand_hostlist(" , ").unwrap_err(),
            HostlistError::Empty(" , ".into())
        );
        assert!(matches!(
            expand_hostlist("n[0-99999999]").unwrap_err(),
            HostlistError::TooLong(_)
        ));
        assert!(matches!(
            expand_hostlist("a[0-999]b[0-9999]").unwrap_err(),
            HostlistError::TooLong(_)
        ));
    }
}
