//! Misspelt names: a new route whose name is a typo of an existing one would take no traffic
//! from it (`route set paymnets` creates a route while `payments` keeps its weights).

/// Edits that turn `a` into `b`: insertions, deletions, substitutions and transpositions of
/// neighbours (`paymnets` → `payments` is one), counted on characters.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    // rows[i][j]: distance between a[..i] and b[..j]; three rows suffice.
    let mut before = vec![0usize; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0usize; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(before[j - 2] + 1);
            }
            cur[j] = d;
        }
        std::mem::swap(&mut before, &mut prev);
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// Largest edit distance at which a new name counts as a misspelling of an existing one.
pub const MAX_TYPO_EDITS: usize = 2;

/// The existing name `name` most likely misspells: at most [`MAX_TYPO_EDITS`] edits away,
/// and fewer edits than half the shorter name (so `b` is no typo of `a`, nor `api` of `web`).
/// The closest wins; ties go to the first in `existing`.
pub fn nearest<'a, S: AsRef<str> + 'a>(
    name: &str,
    existing: impl IntoIterator<Item = &'a S>,
) -> Option<String> {
    existing
        .into_iter()
        .map(|e| e.as_ref())
        .filter(|e| *e != name)
        .map(|e| (edit_distance(name, e), e))
        .filter(|(d, e)| {
            let shorter = name.chars().count().min(e.chars().count());
            *d <= MAX_TYPO_EDITS && 2 * d < shorter
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, e)| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(edit_distance("payments", "payments"), 0);
        assert_eq!(edit_distance("paymnets", "payments"), 1);
        assert_eq!(edit_distance("paymets", "payments"), 1);
        assert_eq!(edit_distance("pymnets", "payments"), 2);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("ledger", "payments"), 7);
    }

    #[test]
    fn nearest_finds_typos_not_short_or_far_names() {
        let routes = [
            "ledger".to_string(),
            "payments".to_string(),
            "a".to_string(),
        ];
        assert_eq!(nearest("paymnets", &routes).as_deref(), Some("payments"));
        assert_eq!(nearest("payment", &routes).as_deref(), Some("payments"));
        assert_eq!(nearest("orders", &routes), None);
        assert_eq!(nearest("b", &routes), None);
        assert_eq!(
            nearest("payments", &routes),
            None,
            "an existing name is no typo"
        );
    }
}
