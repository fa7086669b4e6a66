//! Stream producers: the event sequence of each protocol, run as a task that feeds a channel
//! body through an [`Emitter`]. A producer stops as soon as the client is gone.

use super::body::{Emitter, Gone};
use super::wire::{self, AnthropicEvents, Ids, OpenAiChunks, OpenRouterChunks};

/// How a stream ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ending {
    /// Finish event(s) and the protocol's terminator.
    Complete,
    /// Abort the connection right after the content events.
    Cut,
    /// A mid-stream error under HTTP 200 (OpenRouter-style chunk / Anthropic `event: error`).
    Error,
}

/// What one stream will contain.
#[derive(Debug, Clone, Copy)]
pub(super) struct Plan {
    /// Content events to send.
    pub content: usize,
    /// Whether the content was cut short by the request's max tokens (finish `length` /
    /// `max_tokens` instead of `stop` / `end_turn`).
    pub hit_max_tokens: bool,
    pub ending: Ending,
    /// Prompt tokens to report.
    pub prompt_tokens: u64,
}

/// Runs an OpenAI stream to its end (or until the client leaves).
pub(super) async fn openai(
    mut out: Emitter,
    ids: Ids,
    plan: Plan,
    include_usage: bool,
    provider: String,
) {
    let result = if plan.ending == Ending::Error {
        openrouter_error_stream(&mut out, &ids, &plan, &provider).await
    } else {
        openai_stream(&mut out, &ids, &plan, include_usage).await
    };
    if result.is_ok() && plan.ending == Ending::Cut {
        out.abort().await;
    }
}

async fn openai_stream(
    out: &mut Emitter,
    ids: &Ids,
    plan: &Plan,
    include_usage: bool,
) -> Result<(), Gone> {
    let chunks = OpenAiChunks::new(ids);
    out.send(chunks.role()).await?;
    for i in 0..plan.content {
        out.send(chunks.content(i)).await?;
    }
    if plan.ending == Ending::Cut {
        return Ok(());
    }
    let reason = if plan.hit_max_tokens {
        "length"
    } else {
        "stop"
    };
    out.send(chunks.finish(reason)).await?;
    if include_usage {
        out.send(chunks.usage(plan.prompt_tokens, plan.content as u64))
            .await?;
    }
    out.send(wire::OPENAI_DONE).await
}

/// OpenRouter's shape of a failing stream: processing comments, the empty role chunk, content,
/// then a chunk with a top-level `error`, then `[DONE]` (as in the recorded sample).
async fn openrouter_error_stream(
    out: &mut Emitter,
    ids: &Ids,
    plan: &Plan,
    provider: &str,
) -> Result<(), Gone> {
    let chunks = OpenRouterChunks::new(ids, provider);
    out.send(wire::OPENROUTER_COMMENT).await?;
    out.send(wire::OPENROUTER_COMMENT).await?;
    out.send(chunks.role()).await?;
    for i in 0..plan.content {
        out.send(chunks.content(i)).await?;
    }
    out.send(chunks.error(plan.prompt_tokens, plan.content as u64))
        .await?;
    out.send(wire::OPENAI_DONE).await
}

/// Runs an Anthropic stream to its end (or until the client leaves).
pub(super) async fn anthropic(mut out: Emitter, ids: Ids, plan: Plan) {
    if anthropic_stream(&mut out, &ids, &plan).await.is_ok() && plan.ending == Ending::Cut {
        out.abort().await;
    }
}

async fn anthropic_stream(out: &mut Emitter, ids: &Ids, plan: &Plan) -> Result<(), Gone> {
    let events = AnthropicEvents::new(ids);
    out.send(events.message_start(plan.prompt_tokens)).await?;
    out.send(events.content_block_start()).await?;
    out.send(events.ping()).await?;
    for i in 0..plan.content {
        out.send(events.delta(i)).await?;
    }
    match plan.ending {
        Ending::Cut => return Ok(()),
        Ending::Error => return out.send(events.overloaded()).await,
        Ending::Complete => {}
    }
    out.send(events.content_block_stop()).await?;
    let reason = if plan.hit_max_tokens {
        "max_tokens"
    } else {
        "end_turn"
    };
    out.send(events.message_delta(reason, plan.prompt_tokens, plan.content as u64))
        .await?;
    out.send(events.message_stop()).await
}

/// What a [`super::Behavior::ToolCall`] stream contains.
#[derive(Debug, Clone)]
pub(super) struct ToolPlan {
    pub name: String,
    /// The arguments object as JSON text.
    pub arguments: String,
    /// Prompt tokens to report.
    pub prompt_tokens: u64,
}

/// Runs an OpenAI tool-call stream (shape of openai-tool-call-stream.sse) to its end (or until
/// the client leaves).
pub(super) async fn openai_tool_call(
    mut out: Emitter,
    ids: Ids,
    plan: ToolPlan,
    include_usage: bool,
) {
    let _ = openai_tool_stream(&mut out, &ids, &plan, include_usage).await;
}

async fn openai_tool_stream(
    out: &mut Emitter,
    ids: &Ids,
    plan: &ToolPlan,
    include_usage: bool,
) -> Result<(), Gone> {
    let chunks = OpenAiChunks::new(ids);
    let fragments = wire::fragments(&plan.arguments);
    out.send(chunks.tool_call_start(&plan.name)).await?;
    for fragment in &fragments {
        out.send(chunks.tool_arguments(fragment)).await?;
    }
    out.send(chunks.finish("tool_calls")).await?;
    if include_usage {
        out.send(chunks.usage(plan.prompt_tokens, fragments.len() as u64))
            .await?;
    }
    out.send(wire::OPENAI_DONE).await
}

/// Runs an Anthropic tool-use stream (shape of anthropic-tool-use-stream.sse) to its end (or
/// until the client leaves).
pub(super) async fn anthropic_tool_use(mut out: Emitter, ids: Ids, plan: ToolPlan) {
    let _ = anthropic_tool_stream(&mut out, &ids, &plan).await;
}

async fn anthropic_tool_stream(out: &mut Emitter, ids: &Ids, plan: &ToolPlan) -> Result<(), Gone> {
    let events = AnthropicEvents::new(ids);
    let fragments = wire::fragments(&plan.arguments);
    out.send(events.message_start(plan.prompt_tokens)).await?;
    out.send(events.tool_use_start(&plan.name)).await?;
    out.send(events.ping()).await?;
    // The real API opens the input with an empty fragment.
    out.send(events.input_json_delta("")).await?;
    for fragment in &fragments {
        out.send(events.input_json_delta(fragment)).await?;
    }
    out.send(events.content_block_stop()).await?;
    out.send(events.message_delta("tool_use", plan.prompt_tokens, fragments.len() as u64))
        .await?;
    out.send(events.message_stop()).await
}
