//! The recorded provider samples in `testkit/samples/`: real upstream completions, stream bodies,
//! model lists and error bodies (provenance of each file in `testkit/samples/SOURCES.md`).
//!
//! Every file is embedded at compile time, so a test reads the exact recorded bytes without a
//! path to get wrong, and a recording missing from the checkout fails the build instead of a test
//! at run time. A test names a sample by its file name: [`bytes`] or [`text`].

/// Embeds each named file of `testkit/samples/` as `(file name, bytes)`.
macro_rules! recordings {
    ($($name:literal),* $(,)?) => {
        /// Every sample, by file name, in file name order.
        pub const ALL: &[(&str, &[u8])] = &[
            $(($name, include_bytes!(concat!("../samples/", $name)))),*
        ];
    };
}

recordings!(
    "anthropic-error-404.json",
    "anthropic-error-429.json",
    "anthropic-error.json",
    "anthropic-message.json",
    "anthropic-stream.sse",
    "anthropic-tool-use-stream.recorded.jsonl",
    "anthropic-tool-use-stream.sse",
    "codex-responses-request.json",
    "deepseek-chat-completion.json",
    "deepseek-models.json",
    "deepseek-pricing.md",
    "deepseek-stream.trimmed.sse",
    "gemini-cli-0.61.0-router-request.json",
    "gemini-cli-0.61.0-stream-request.json",
    "gemini-cli-0.61.0-tool-result-request.json",
    "gemini-error-400-api-key-invalid.json",
    "gemini-error-403-consumer-suspended.json",
    "gemini-error-403-leaked-key.json",
    "gemini-error-404.json",
    "gemini-error-429-no-allowance.json",
    "gemini-error-429-per-day.json",
    "gemini-error-429-per-minute.json",
    "gemini-generate-content-max-tokens-empty.json",
    "gemini-generate-content.json",
    "gemini-stream.sse",
    "google-genai-3.6.1-batch-embed-contents-request.json",
    "google-genai-3.6.1-count-tokens-request.json",
    "google-genai-3.6.1-generate-content-request.json",
    "google-genai-3.6.1-stream-request.json",
    "groq-error-404.json",
    "groq-stream-midstream-error.trimmed.sse",
    "groq-stream-tail.trimmed.sse",
    "groq-tool-call-stream.recorded.jsonl",
    "mistral-chat-stream.recorded.jsonl",
    "openai-chat-completion.json",
    "openai-chat-stream.sse",
    "openai-error-404.json",
    "openai-error-429.json",
    "openai-error.json",
    "openai-responses-reasoning-tools.recorded.jsonl",
    "openai-responses-stream-error.recorded.jsonl",
    "openai-responses-stream.recorded.jsonl",
    "openai-responses.json",
    "openai-tool-call-stream.sse",
    "openrouter-error-429.json",
    "openrouter-model-endpoints.json",
    "openrouter-models.json",
    "openrouter-stream-midstream-error.sse",
    "openrouter-stream-usage-cost.sse",
    "openrouter-usage-cost.json",
    "openrouter-usage-without-include.json",
    "qwen-dashscope-stream-tail.recorded.jsonl",
    "xai-chat-stream.recorded.jsonl",
    "zai-glm-stream-tail.trimmed.sse",
    "zenmux-generation.json",
    "zenmux-models.json",
);

/// The recorded bytes of the sample `name` (a file name in `testkit/samples/`).
///
/// # Panics
/// If no sample has that name: a test that asks for one is wrong.
pub fn bytes(name: &str) -> &'static [u8] {
    match ALL.iter().find(|(n, _)| *n == name) {
        Some((_, bytes)) => bytes,
        None => panic!(
            "no recorded sample {name:?} in testkit/samples; known: {:?}",
            ALL.iter().map(|(n, _)| *n).collect::<Vec<_>>()
        ),
    }
}

/// The sample `name` as text (every sample is UTF-8).
///
/// # Panics
/// If no sample has that name, or it is not UTF-8.
pub fn text(name: &str) -> &'static str {
    match std::str::from_utf8(bytes(name)) {
        Ok(text) => text,
        Err(e) => panic!("sample {name:?} is not UTF-8: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/samples");
    const SOURCES: &str = "SOURCES.md";

    fn files_in_folder() -> BTreeSet<String> {
        std::fs::read_dir(DIR)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n != SOURCES)
            .collect()
    }

    #[test]
    fn every_file_in_the_folder_is_embedded() {
        let embedded: BTreeSet<String> = ALL.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(embedded, files_in_folder());
    }

    #[test]
    fn every_sample_has_its_provenance() {
        let sources = std::fs::read_to_string(format!("{DIR}/{SOURCES}")).unwrap();
        for (name, _) in ALL {
            assert!(
                sources.contains(&format!("\n| {name} |")),
                "{SOURCES} has no provenance row for {name}"
            );
        }
    }

    #[test]
    fn recordings_keep_their_bytes() {
        // A checkout that converted line ends would change what the parsers are tested on.
        assert!(
            text("gemini-stream.sse").contains("\r\n"),
            "Gemini sends CRLF"
        );
        assert!(!text("openai-chat-stream.sse").contains('\r'));
        // The length Anthropic's response declared in its Content-Length.
        assert_eq!(bytes("anthropic-stream.sse").len(), 1123);
        for (name, data) in ALL {
            assert!(std::str::from_utf8(data).is_ok(), "{name} is not UTF-8");
        }
    }

    #[test]
    #[should_panic(expected = "no recorded sample")]
    fn an_unknown_name_is_refused() {
        bytes("no-such-sample.json");
    }
}
