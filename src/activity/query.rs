//! The parameters of `GET /api/metrics/activity` and the page they select, as pure functions.
//!
//! llama-swap answers this endpoint from SQL; swapd keeps at most `metricsMaxInMemory` rows,
//! so filtering, sorting and paging a copy of them is cheap and needs no index. Keeping the
//! decision here, away from the handler, lets every parameter rule be table-tested.

use std::cmp::Ordering;

use super::ActivityRow;

/// The largest page size llama-swap accepts.
pub const MAX_LIMIT: usize = 999;

/// The page size when none is asked for.
pub const DEFAULT_LIMIT: usize = 25;

/// What a row can be sorted by; the names are llama-swap's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    Id,
    Time,
    Model,
    ReqPath,
    RespStatusCode,
    RespContentType,
    Cached,
    Prompt,
    Generated,
    Drafted,
    PromptSpeed,
    GenSpeed,
    Duration,
}

/// Every sort key with its query spelling.
pub const SORT_KEYS: [(&str, SortKey); 13] = [
    ("id", SortKey::Id),
    ("time", SortKey::Time),
    ("model", SortKey::Model),
    ("req_path", SortKey::ReqPath),
    ("resp_status_code", SortKey::RespStatusCode),
    ("resp_content_type", SortKey::RespContentType),
    ("cached", SortKey::Cached),
    ("prompt", SortKey::Prompt),
    ("generated", SortKey::Generated),
    ("drafted", SortKey::Drafted),
    ("prompt_speed", SortKey::PromptSpeed),
    ("gen_speed", SortKey::GenSpeed),
    ("duration", SortKey::Duration),
];

/// A parsed query: filters, order and page.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivityQuery {
    /// Rows of any of these models; empty means every model.
    pub models: Vec<String>,
    /// Inclusive bounds on the row's time, in Unix milliseconds.
    pub start: Option<u64>,
    pub end: Option<u64>,
    pub min_id: Option<u64>,
    pub max_id: Option<u64>,
    pub limit: usize,
    /// 1-based.
    pub page: usize,
    pub sort: SortKey,
    pub descending: bool,
}

impl Default for ActivityQuery {
    fn default() -> ActivityQuery {
        ActivityQuery {
            models: Vec::new(),
            start: None,
            end: None,
            min_id: None,
            max_id: None,
            limit: DEFAULT_LIMIT,
            page: 1,
            sort: SortKey::Id,
            descending: true,
        }
    }
}

/// The pairs of a query string, percent-decoded (`+` is a space, as in forms).
pub fn query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (
                crate::http::percent_decode(key),
                crate::http::percent_decode(value),
            )
        })
}

/// Parses the query string of `/api/metrics/activity`; the error is the message for a 400.
/// Unknown parameters are ignored, as llama-swap does.
pub fn parse_query(query: &str) -> Result<ActivityQuery, String> {
    let mut parsed = ActivityQuery::default();
    for (key, value) in query_pairs(query) {
        match key.as_str() {
            // An empty `model=` (a form's "all" choice) filters nothing.
            "model" if value.is_empty() => {}
            "model" => parsed.models.push(value),
            "start" => parsed.start = Some(parse_time("start", &value)?),
            "end" => parsed.end = Some(parse_time("end", &value)?),
            "min_id" => parsed.min_id = Some(parse_number("min_id", &value)?),
            "max_id" => parsed.max_id = Some(parse_number("max_id", &value)?),
            "limit" => {
                let limit = parse_number("limit", &value)?;
                if !(1..=MAX_LIMIT as u64).contains(&limit) {
                    return Err(format!(
                        "invalid limit {value}: must be between 1 and {MAX_LIMIT}"
                    ));
                }
                parsed.limit = limit as usize;
            }
            "page" => {
                let page = parse_number("page", &value)?;
                if page < 1 {
                    return Err(format!("invalid page {value}: must be 1 or more"));
                }
                parsed.page = usize::try_from(page).unwrap_or(usize::MAX);
            }
            "sort" => {
                parsed.sort = SORT_KEYS
                    .iter()
                    .find(|(name, _)| *name == value)
                    .map(|(_, key)| *key)
                    .ok_or_else(|| {
                        let names: Vec<&str> = SORT_KEYS.iter().map(|(name, _)| *name).collect();
                        format!("invalid sort '{value}': use one of {}", names.join(", "))
                    })?;
            }
            "order" => {
                parsed.descending = match value.to_ascii_lowercase().as_str() {
                    "asc" => false,
                    "desc" => true,
                    _ => return Err(format!("invalid order '{value}': use asc or desc")),
                }
            }
            _ => {}
        }
    }
    if let (Some(start), Some(end)) = (parsed.start, parsed.end) {
        if start > end {
            return Err("invalid time range: start is after end".to_string());
        }
    }
    Ok(parsed)
}

fn parse_number(name: &str, value: &str) -> Result<u64, String> {
    value
        .parse::<u64>()
        .map_err(|_| format!("invalid {name} '{value}': expected a whole number"))
}

fn parse_time(name: &str, value: &str) -> Result<u64, String> {
    parse_rfc3339_millis(value).ok_or_else(|| {
        format!("invalid {name} '{value}': expected an RFC 3339 time such as 2026-01-31T12:00:00Z")
    })
}

/// The parser lives with the formatter, in the one calendar module.
pub use crate::timefmt::parse_rfc3339_millis;

/// One page of rows and the counts around it.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<'a> {
    pub rows: Vec<&'a ActivityRow>,
    pub page: usize,
    pub limit: usize,
    pub total: usize,
    pub total_pages: usize,
}

/// Whether `row` passes the query's filters.
pub fn matches(query: &ActivityQuery, row: &ActivityRow) -> bool {
    (query.models.is_empty() || query.models.iter().any(|m| **m == *row.model))
        && query.start.is_none_or(|start| row.unix_millis >= start)
        && query.end.is_none_or(|end| row.unix_millis <= end)
        && query.min_id.is_none_or(|min| row.id >= min)
        && query.max_id.is_none_or(|max| row.id <= max)
}

/// Filters, sorts and pages `rows`. Ties are broken by id in the same direction, so pages are
/// stable while new rows arrive.
pub fn select<'a>(
    query: &ActivityQuery,
    rows: impl IntoIterator<Item = &'a ActivityRow>,
) -> Page<'a> {
    let mut selected: Vec<&ActivityRow> = rows.into_iter().filter(|r| matches(query, r)).collect();
    selected.sort_by(|a, b| {
        let ordering = compare(query.sort, a, b).then(a.id.cmp(&b.id));
        if query.descending {
            ordering.reverse()
        } else {
            ordering
        }
    });
    let total = selected.len();
    let total_pages = total.div_ceil(query.limit);
    let skip = (query.page - 1).saturating_mul(query.limit);
    let rows = selected.into_iter().skip(skip).take(query.limit).collect();
    Page {
        rows,
        page: query.page,
        limit: query.limit,
        total,
        total_pages,
    }
}

fn compare(key: SortKey, a: &ActivityRow, b: &ActivityRow) -> Ordering {
    let float = |x: f64, y: f64| x.total_cmp(&y);
    match key {
        SortKey::Id => a.id.cmp(&b.id),
        SortKey::Time => a.unix_millis.cmp(&b.unix_millis),
        SortKey::Model => a.model.cmp(&b.model),
        SortKey::ReqPath => a.req_path.cmp(&b.req_path),
        SortKey::RespStatusCode => a.status.cmp(&b.status),
        SortKey::RespContentType => a.content_type.cmp(&b.content_type),
        SortKey::Cached => a.tokens.cache.cmp(&b.tokens.cache),
        SortKey::Prompt => a.tokens.input.cmp(&b.tokens.input),
        SortKey::Generated => a.tokens.output.cmp(&b.tokens.output),
        SortKey::Drafted => a.tokens.draft.cmp(&b.tokens.draft),
        SortKey::PromptSpeed => float(a.tokens.prompt_per_second, b.tokens.prompt_per_second),
        SortKey::GenSpeed => float(a.tokens.tokens_per_second, b.tokens.tokens_per_second),
        SortKey::Duration => a.duration_ms.cmp(&b.duration_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activity::Tokens;
    use std::sync::Arc;

    fn row(id: u64, model: &str, millis: u64, output: i64, speed: f64) -> ActivityRow {
        ActivityRow {
            id,
            unix_millis: millis,
            model: Arc::from(model),
            req_path: Arc::from("/v1/chat/completions"),
            content_type: Arc::from("application/json"),
            status: 200,
            tokens: Tokens {
                output,
                tokens_per_second: speed,
                ..Tokens::unknown()
            },
            duration_ms: 1000 - id,
            error_msg: None,
        }
    }

    #[test]
    fn parses_every_parameter() {
        let query = parse_query(
            "model=a&model=b%2Fc&start=2026-01-01T00:00:00Z&end=2026-01-02T00:00:00.5%2B01:00\
             &min_id=3&max_id=9&limit=10&page=2&sort=gen_speed&order=ASC&other=x",
        )
        .expect("valid");
        assert_eq!(query.models, ["a", "b/c"]);
        assert_eq!(query.start, Some(1_767_225_600_000));
        assert_eq!(
            query.end,
            Some(1_767_225_600_000 + 86_400_000 - 3_600_000 + 500)
        );
        assert_eq!((query.min_id, query.max_id), (Some(3), Some(9)));
        assert_eq!((query.limit, query.page), (10, 2));
        assert_eq!(query.sort, SortKey::GenSpeed);
        assert!(!query.descending);
        assert_eq!(parse_query("").expect("empty"), ActivityQuery::default());
    }

    #[test]
    fn every_sort_key_parses() {
        for (name, key) in SORT_KEYS {
            assert_eq!(parse_query(&format!("sort={name}")).expect(name).sort, key);
        }
    }

    #[test]
    fn bad_parameters_are_named_in_the_error() {
        let cases = [
            ("limit=0", "limit"),
            ("limit=1000", "limit"),
            ("limit=x", "limit"),
            ("limit=-1", "limit"),
            ("page=0", "page"),
            ("page=abc", "page"),
            ("sort=speed", "sort"),
            ("order=up", "order"),
            ("start=yesterday", "start"),
            ("end=2026-13-01T00:00:00Z", "end"),
            ("start=2026-02-30T00:00:00Z", "start"),
            ("min_id=1.5", "min_id"),
            ("max_id=", "max_id"),
            (
                "start=2026-01-02T00:00:00Z&end=2026-01-01T00:00:00Z",
                "start is after end",
            ),
        ];
        for (query, needle) in cases {
            let error = parse_query(query).expect_err(query);
            assert!(error.contains(needle), "{query}: {error}");
        }
    }

    #[test]
    fn filters_sorts_and_pages() {
        let rows: Vec<ActivityRow> = (1..=7)
            .map(|id| {
                let model = if id % 2 == 0 { "even" } else { "odd" };
                row(id, model, id * 1000, (id as i64 * 3) % 7, id as f64)
            })
            .collect();
        let ids = |page: &Page| page.rows.iter().map(|r| r.id).collect::<Vec<_>>();

        let page = select(&ActivityQuery::default(), &rows);
        assert_eq!(ids(&page), [7, 6, 5, 4, 3, 2, 1]);
        assert_eq!((page.total, page.total_pages, page.page), (7, 1, 1));

        let query = |text: &str| parse_query(text).expect(text);
        let page = select(&query("limit=3&page=3"), &rows);
        assert_eq!(ids(&page), [1]);
        assert_eq!((page.total, page.total_pages), (7, 3));
        assert!(select(&query("limit=3&page=4"), &rows).rows.is_empty());

        assert_eq!(ids(&select(&query("model=even"), &rows)), [6, 4, 2]);
        assert_eq!(
            ids(&select(&query("model=even&model=odd&limit=2"), &rows)),
            [7, 6]
        );
        assert_eq!(
            ids(&select(&query("min_id=3&max_id=5&order=asc"), &rows)),
            [3, 4, 5]
        );
        let window = "start=1970-01-01T00:00:02Z&end=1970-01-01T00:00:04Z&order=asc";
        assert_eq!(ids(&select(&query(window), &rows)), [2, 3, 4]);
        // Outputs are 3,6,2,5,1,4,0 for ids 1..7.
        assert_eq!(
            ids(&select(&query("sort=generated&order=asc"), &rows)),
            [7, 5, 3, 1, 6, 4, 2]
        );
        assert_eq!(
            ids(&select(&query("sort=duration&order=asc"), &rows)),
            [7, 6, 5, 4, 3, 2, 1]
        );
        assert_eq!(ids(&select(&query("sort=model&limit=1"), &rows)), [7]);
        let none = select(&query("model=missing"), &rows);
        assert_eq!((none.total, none.total_pages), (0, 0));
    }
}
