//! What the usage scanner reads from one JSON document: the `usage`, `timings` and vLLM
//! `metrics` objects, through hand-written lenient serde visitors, and how their fields merge
//! into one [`TokenUsage`].

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::metrics::TokenUsage;

/// What has been read from a response so far.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Found {
    pub(super) input: Option<u64>,
    pub(super) output: Option<u64>,
    pub(super) cached: Option<u64>,
    /// The last `timings` object seen.
    pub(super) timings: Option<Timings>,
    /// The last vLLM `metrics` object seen.
    pub(super) vllm: Option<VllmMetrics>,
}

impl Found {
    /// Merges a `usage` object: later non-zero values overwrite earlier ones (llama-swap's
    /// rule, which lets Anthropic's `message_delta` complete `message_start`).
    pub(super) fn merge_usage(&mut self, usage: UsageFields) {
        merge_count(&mut self.input, usage.input);
        merge_count(&mut self.output, usage.output);
        merge_count(&mut self.cached, usage.cached);
    }

    pub(super) fn usage(&self) -> TokenUsage {
        let mut usage = TokenUsage {
            input: self.input,
            output: self.output,
            cached: self.cached,
            prompt_per_second: None,
            tokens_per_second: None,
            draft: None,
            draft_accepted: None,
            upstream_millis: None,
        };
        // vLLM: prompt speed from the uncached prompt tokens over the time to first token,
        // generation speed from the mean inter-token latency (llama-swap's derivation).
        if let Some(vllm) = self.vllm {
            let uncached = usage
                .input
                .map(|input| input.saturating_sub(usage.cached.unwrap_or(0)));
            usage.prompt_per_second = derived_rate(uncached, vllm.time_to_first_token_ms);
            usage.tokens_per_second = derived_rate(Some(1), vllm.mean_itl_ms);
            if let (Some(draft), Some(accepted)) = (
                to_count(vllm.num_draft_tokens),
                to_count(vllm.num_accepted_draft_tokens),
            ) {
                usage.draft = Some(draft);
                usage.draft_accepted = Some(accepted);
            }
        }
        if let Some(timings) = self.timings {
            let prompt_n = to_count(timings.prompt_n);
            let predicted_n = to_count(timings.predicted_n);
            usage.input = prompt_n.or(usage.input);
            usage.output = predicted_n.or(usage.output);
            usage.cached = to_count(timings.cache_n).or(usage.cached);
            usage.prompt_per_second = to_rate(timings.prompt_per_second)
                .or_else(|| derived_rate(prompt_n, timings.prompt_ms));
            usage.tokens_per_second = to_rate(timings.predicted_per_second)
                .or_else(|| derived_rate(predicted_n, timings.predicted_ms));
            usage.draft = to_count(timings.draft_n).or(usage.draft);
            usage.draft_accepted = to_count(timings.draft_n_accepted).or(usage.draft_accepted);
            let millis = to_rate(timings.prompt_ms).unwrap_or(0.0)
                + to_rate(timings.predicted_ms).unwrap_or(0.0);
            usage.upstream_millis = (millis > 0.0).then_some(millis);
        }
        usage
    }
}

fn merge_count(slot: &mut Option<u64>, value: Option<u64>) {
    if let Some(value) = value {
        if slot.is_none() || value != 0 {
            *slot = Some(value);
        }
    }
}

/// A token count from a JSON number; negative or non-finite numbers mean "unknown".
fn to_count(value: Option<f64>) -> Option<u64> {
    // The cast saturates, and token counts are far below 2^53 anyway.
    value
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(|v| v as u64)
}

fn to_rate(value: Option<f64>) -> Option<f64> {
    value.filter(|v| v.is_finite() && *v >= 0.0)
}

/// Tokens per second from a count and the milliseconds it took, when the upstream gave those
/// but not the rate itself.
fn derived_rate(count: Option<u64>, millis: Option<f64>) -> Option<f64> {
    let millis = to_rate(millis).filter(|&ms| ms > 0.0)?;
    Some(count? as f64 * 1000.0 / millis)
}

/// The fields of one `usage` object.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct UsageFields {
    input: Option<u64>,
    output: Option<u64>,
    cached: Option<u64>,
}

impl UsageFields {
    pub(super) fn is_some(&self) -> bool {
        self.input.is_some() || self.output.is_some() || self.cached.is_some()
    }
}

/// The fields of one llama.cpp `timings` object.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Timings {
    prompt_n: Option<f64>,
    predicted_n: Option<f64>,
    cache_n: Option<f64>,
    prompt_per_second: Option<f64>,
    predicted_per_second: Option<f64>,
    prompt_ms: Option<f64>,
    predicted_ms: Option<f64>,
    draft_n: Option<f64>,
    draft_n_accepted: Option<f64>,
}

/// The fields of one vLLM `metrics` object.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct VllmMetrics {
    time_to_first_token_ms: Option<f64>,
    mean_itl_ms: Option<f64>,
    num_draft_tokens: Option<f64>,
    num_accepted_draft_tokens: Option<f64>,
}

// The JSON is read with hand-written, lenient serde visitors rather than into a
// `serde_json::Value`: unknown fields are skipped without allocating, a value of an unexpected
// type is treated as absent instead of failing the whole document, and duplicate keys are
// accepted (the last one wins).

/// The object keys the scanner cares about; everything else is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Key {
    Usage,
    Timings,
    Response,
    Message,
    PromptTokens,
    InputTokens,
    CompletionTokens,
    OutputTokens,
    CacheReadInputTokens,
    PromptTokensDetails,
    InputTokensDetails,
    CachedTokens,
    PromptN,
    PredictedN,
    CacheN,
    PromptPerSecond,
    PredictedPerSecond,
    PromptMs,
    PredictedMs,
    DraftN,
    DraftNAccepted,
    Metrics,
    TimeToFirstTokenMs,
    MeanItlMs,
    SpeculativeDecoding,
    NumDraftTokens,
    NumAcceptedDraftTokens,
    Other,
}

impl Key {
    fn from_name(name: &[u8]) -> Key {
        match name {
            b"usage" => Key::Usage,
            b"timings" => Key::Timings,
            b"response" => Key::Response,
            b"message" => Key::Message,
            b"prompt_tokens" => Key::PromptTokens,
            b"input_tokens" => Key::InputTokens,
            b"completion_tokens" => Key::CompletionTokens,
            b"output_tokens" => Key::OutputTokens,
            b"cache_read_input_tokens" => Key::CacheReadInputTokens,
            b"prompt_tokens_details" => Key::PromptTokensDetails,
            b"input_tokens_details" => Key::InputTokensDetails,
            b"cached_tokens" => Key::CachedTokens,
            b"prompt_n" => Key::PromptN,
            b"predicted_n" => Key::PredictedN,
            b"cache_n" => Key::CacheN,
            b"prompt_per_second" => Key::PromptPerSecond,
            b"predicted_per_second" => Key::PredictedPerSecond,
            b"prompt_ms" => Key::PromptMs,
            b"predicted_ms" => Key::PredictedMs,
            b"draft_n" => Key::DraftN,
            b"draft_n_accepted" => Key::DraftNAccepted,
            b"metrics" => Key::Metrics,
            b"time_to_first_token_ms" => Key::TimeToFirstTokenMs,
            b"mean_itl_ms" => Key::MeanItlMs,
            b"speculative_decoding" => Key::SpeculativeDecoding,
            b"num_draft_tokens" => Key::NumDraftTokens,
            b"num_accepted_draft_tokens" => Key::NumAcceptedDraftTokens,
            _ => Key::Other,
        }
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Key, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<Key, E> {
                Ok(Key::from_name(name.as_bytes()))
            }
            fn visit_bytes<E: de::Error>(self, name: &[u8]) -> Result<Key, E> {
                Ok(Key::from_name(name))
            }
        }
        // As bytes: serde_json then hands over the raw key without validating its UTF-8 (the
        // keys compared against are ASCII, and any other key is `Other` either way), which
        // was a sizeable part of scanning a response.
        deserializer.deserialize_bytes(KeyVisitor)
    }
}

/// A JSON number, or `None` for any other value.
struct Num(Option<f64>);

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Num, D::Error> {
        struct NumVisitor;
        impl<'de> Visitor<'de> for NumVisitor {
            type Value = Num;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Num, E> {
                Ok(Num(Some(v as f64)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Num, E> {
                Ok(Num(Some(v as f64)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Num, E> {
                Ok(Num(Some(v)))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Num, E> {
                Ok(Num(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Num, E> {
                Ok(Num(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Num, E> {
                Ok(Num(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Num, E> {
                Ok(Num(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Num, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Num(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Num, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Num(None))
            }
        }
        deserializer.deserialize_any(NumVisitor)
    }
}

/// The shape-specific part of a lenient object visitor: what to do with each field, and with
/// each element if the value turns out to be an array.
pub(super) trait ObjectVisit {
    /// The result; its default is returned for values that are not objects.
    type Out: Default;

    /// Consumes the value of `key` from `map`.
    fn field<'de, A: MapAccess<'de>>(&mut self, key: Key, map: &mut A) -> Result<(), A::Error>;

    /// Consumes one element of an array; returns `false` at its end.
    fn element<'de, A: SeqAccess<'de>>(&mut self, seq: &mut A) -> Result<bool, A::Error> {
        Ok(seq.next_element::<IgnoredAny>()?.is_some())
    }

    /// The result for an object whose fields have all been visited.
    fn finish(self) -> Self::Out;
}

/// Accepts any JSON value, visiting objects with `T` and skipping everything else.
pub(super) struct Lenient<T>(pub(super) T);

impl<'de, T: ObjectVisit> DeserializeSeed<'de> for Lenient<T> {
    type Value = T::Out;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<T::Out, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de, T: ObjectVisit> Visitor<'de> for Lenient<T> {
    type Value = T::Out;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<T::Out, E> {
        Ok(T::Out::default())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<T::Out, E> {
        Ok(T::Out::default())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<T::Out, E> {
        Ok(T::Out::default())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<T::Out, E> {
        Ok(T::Out::default())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<T::Out, E> {
        Ok(T::Out::default())
    }
    fn visit_unit<E: de::Error>(self) -> Result<T::Out, E> {
        Ok(T::Out::default())
    }
    fn visit_none<E: de::Error>(self) -> Result<T::Out, E> {
        Ok(T::Out::default())
    }
    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<T::Out, A::Error> {
        while self.0.element(&mut seq)? {}
        Ok(T::Out::default())
    }
    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<T::Out, A::Error> {
        while let Some(key) = map.next_key::<Key>()? {
            self.0.field(key, &mut map)?;
        }
        Ok(self.0.finish())
    }
}

/// A whole event or body: `usage`, `timings`, `response.usage` and `message.usage` at the top
/// level, and the same in each element of a top-level array (llama.cpp `/infill`).
pub(super) struct Envelope<'a>(pub(super) &'a mut Found);

impl ObjectVisit for Envelope<'_> {
    type Out = ();

    fn field<'de, A: MapAccess<'de>>(&mut self, key: Key, map: &mut A) -> Result<(), A::Error> {
        match key {
            Key::Usage => {
                if let Some(usage) = map.next_value_seed(Lenient(UsageVisit::default()))? {
                    self.0.merge_usage(usage);
                }
            }
            Key::Timings => {
                if let Some(timings) = map.next_value_seed(Lenient(TimingsVisit::default()))? {
                    self.0.timings = Some(timings);
                }
            }
            Key::Metrics => {
                if let Some(metrics) = map.next_value_seed(Lenient(VllmVisit::default()))? {
                    self.0.vllm = Some(metrics);
                }
            }
            Key::Response | Key::Message => {
                map.next_value_seed(Lenient(UsageHolder(&mut *self.0)))?;
            }
            _ => {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }

    fn element<'de, A: SeqAccess<'de>>(&mut self, seq: &mut A) -> Result<bool, A::Error> {
        Ok(seq
            .next_element_seed(Lenient(Envelope(&mut *self.0)))?
            .is_some())
    }

    fn finish(self) -> Self::Out {}
}

/// An object that may hold a `usage` object (OpenAI Responses `response`, Anthropic `message`).
struct UsageHolder<'a>(&'a mut Found);

impl ObjectVisit for UsageHolder<'_> {
    type Out = ();

    fn field<'de, A: MapAccess<'de>>(&mut self, key: Key, map: &mut A) -> Result<(), A::Error> {
        if key == Key::Usage {
            if let Some(usage) = map.next_value_seed(Lenient(UsageVisit::default()))? {
                self.0.merge_usage(usage);
            }
        } else {
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }

    fn finish(self) -> Self::Out {}
}

/// A `usage` object in any of the OpenAI, OpenAI Responses and Anthropic spellings.
#[derive(Default)]
pub(super) struct UsageVisit(UsageFields);

impl ObjectVisit for UsageVisit {
    type Out = Option<UsageFields>;

    fn field<'de, A: MapAccess<'de>>(&mut self, key: Key, map: &mut A) -> Result<(), A::Error> {
        let usage = &mut self.0;
        match key {
            Key::PromptTokens | Key::InputTokens => {
                merge_count(&mut usage.input, to_count(map.next_value::<Num>()?.0));
            }
            Key::CompletionTokens | Key::OutputTokens => {
                merge_count(&mut usage.output, to_count(map.next_value::<Num>()?.0));
            }
            Key::CacheReadInputTokens => {
                merge_count(&mut usage.cached, to_count(map.next_value::<Num>()?.0));
            }
            Key::PromptTokensDetails | Key::InputTokensDetails => {
                let cached = map.next_value_seed(Lenient(DetailsVisit::default()))?;
                merge_count(&mut usage.cached, to_count(cached));
            }
            _ => {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }

    fn finish(self) -> Self::Out {
        Some(self.0)
    }
}

/// A `prompt_tokens_details` or `input_tokens_details` object.
#[derive(Default)]
struct DetailsVisit(Option<f64>);

impl ObjectVisit for DetailsVisit {
    type Out = Option<f64>;

    fn field<'de, A: MapAccess<'de>>(&mut self, key: Key, map: &mut A) -> Result<(), A::Error> {
        if key == Key::CachedTokens {
            self.0 = map.next_value::<Num>()?.0;
        } else {
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }

    fn finish(self) -> Self::Out {
        self.0
    }
}

/// A llama.cpp `timings` object.
#[derive(Default)]
pub(super) struct TimingsVisit(Timings);

impl ObjectVisit for TimingsVisit {
    type Out = Option<Timings>;

    fn field<'de, A: MapAccess<'de>>(&mut self, key: Key, map: &mut A) -> Result<(), A::Error> {
        let timings = &mut self.0;
        let slot = match key {
            Key::PromptN => &mut timings.prompt_n,
            Key::PredictedN => &mut timings.predicted_n,
            Key::CacheN => &mut timings.cache_n,
            Key::PromptPerSecond => &mut timings.prompt_per_second,
            Key::PredictedPerSecond => &mut timings.predicted_per_second,
            Key::PromptMs => &mut timings.prompt_ms,
            Key::PredictedMs => &mut timings.predicted_ms,
            Key::DraftN => &mut timings.draft_n,
            Key::DraftNAccepted => &mut timings.draft_n_accepted,
            _ => {
                map.next_value::<IgnoredAny>()?;
                return Ok(());
            }
        };
        *slot = map.next_value::<Num>()?.0;
        Ok(())
    }

    fn finish(self) -> Self::Out {
        Some(self.0)
    }
}

/// A vLLM `metrics` object (and its `speculative_decoding` member).
#[derive(Default)]
pub(super) struct VllmVisit(VllmMetrics);

impl ObjectVisit for VllmVisit {
    type Out = Option<VllmMetrics>;

    fn field<'de, A: MapAccess<'de>>(&mut self, key: Key, map: &mut A) -> Result<(), A::Error> {
        let metrics = &mut self.0;
        let slot = match key {
            Key::TimeToFirstTokenMs => &mut metrics.time_to_first_token_ms,
            Key::MeanItlMs => &mut metrics.mean_itl_ms,
            Key::NumDraftTokens => &mut metrics.num_draft_tokens,
            Key::NumAcceptedDraftTokens => &mut metrics.num_accepted_draft_tokens,
            Key::SpeculativeDecoding => {
                if let Some(inner) = map.next_value_seed(Lenient(VllmVisit::default()))? {
                    metrics.num_draft_tokens = inner.num_draft_tokens;
                    metrics.num_accepted_draft_tokens = inner.num_accepted_draft_tokens;
                }
                return Ok(());
            }
            _ => {
                map.next_value::<IgnoredAny>()?;
                return Ok(());
            }
        };
        *slot = map.next_value::<Num>()?.0;
        Ok(())
    }

    fn finish(self) -> Self::Out {
        Some(self.0)
    }
}
