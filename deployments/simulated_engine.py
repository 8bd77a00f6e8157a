"""A simulated LLM engine behind the same Serve LLM server, ingress and routes as vLLM.

Benchmarks and routing tests need many "sites" with controllable speed, and a
2-core machine can run one small vLLM engine at most. The simulated engine
implements Ray's `LLMEngine` interface, so `ray.serve.llm`'s `LLMServer`, its
OpenAI ingress, request ids, stream batching and metrics are the very code
that serves vLLM models; only token generation is replaced by a timed loop.
Responses are vLLM's own protocol models, so their shapes match exactly.

Timing model (SimulatedEngineConfig): a request waits for one of
`max_num_seqs` slots, then its first token takes `ttft_ms` and each later one
`tpot_ms`, both stretched by `1 + slowdown_per_seq * (running - 1)`.
Tokens are counted with a simple word/punctuation split. Prefix caching is
simulated as vLLM does it: a prompt's full blocks of 16 tokens are hashed,
each with the one before it and the request's `cache_salt`, and the blocks
an earlier prompt left are reported as `usage.prompt_tokens_details.cached_tokens`
(timing is unchanged): what the gateway's per-user salting is tested against.
Embeddings are the inputs' words hashed into `embedding_dim` buckets, so
texts that share words are near, as with a real embedding model.

Tool calls, so tool round trips run without a model: a chat request that offers
tools (tool_choice not "none") and whose last message is not a tool result is
answered with one call when tool_choice is "required" (the first tool) or names a
function, or, under "auto", when `tool_calls` is "always", or "on-marker" (the
default) and its last user message holds TOOL_CALL_MARKER: `[tool_call]` calls
the first tool, `[tool_call:NAME]` the tool NAME (an unknown NAME is a 400). The
arguments are a JSON object with a placeholder for each `required` property of the
function's schema ("simulated", 1, 1.5, true, [], {}, an enum's first value, else
null). Shapes are vLLM's: content None under auto and "" when forced, finish_reason
"tool_calls" ("stop" for a named function, as OpenAI and vLLM do); streamed, the
call's id and name come first, then its arguments token by token.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import hashlib
import json
import math
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

from ray.llm._internal.serve.core.configs.openai_api_models import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    EmbeddingResponse,
    ErrorInfo,
    ErrorResponse,
)
from ray.llm._internal.serve.core.engine.protocol import LLMEngine
from ray.llm._internal.serve.core.server.llm_server import LLMServer
from vllm.entrypoints.generate.base.protocol import (
    DeltaFunctionCall,
    DeltaMessage,
    DeltaToolCall,
    FunctionCall,
    FunctionDefinition,
    ToolCall,
)
from vllm.entrypoints.openai.chat_completion.protocol import (
    ChatCompletionNamedToolChoiceParam,
    ChatCompletionResponseChoice,
    ChatCompletionResponseStreamChoice,
    ChatCompletionStreamResponse,
    ChatMessage,
)
from vllm.entrypoints.openai.completion.protocol import (
    CompletionResponseChoice,
    CompletionResponseStreamChoice,
    CompletionStreamResponse,
)
from vllm.entrypoints.pooling.embed.protocol import EmbeddingResponseData
from vllm.entrypoints.serve.engine.protocol import PromptTokenUsageInfo, UsageInfo
from vllm.renderers.chat_utils import make_tool_call_id

from deployments.serve_logging import quiet_terminal
from deployments.site_config import SIMULATED_ENGINE_KEY, SimulatedEngineConfig

_TOKEN = re.compile(r"\w+|[^\w\s]")
_WORDS = [
    "the",
    "model",
    "answers",
    "from",
    "a",
    "simulated",
    "engine",
    "whose",
    "timing",
    "follows",
    "its",
    "config",
    "so",
    "routing",
    "and",
    "load",
    "tests",
    "see",
    "realistic",
    "latency",
    "without",
    "any",
    "weights",
]
# Per-message overhead of a chat template, in tokens (role markers, newlines).
_CHAT_TOKENS_PER_MESSAGE = 4
# vLLM's default KV block size, and how many blocks the simulated cache keeps.
_BLOCK_TOKENS = 16
_CACHED_BLOCKS = 10_000
# What in a user message asks for a tool call: `[tool_call]`, or `[tool_call:NAME]`.
TOOL_CALL_MARKER = "[tool_call"
_MARKER = re.compile(re.escape(TOOL_CALL_MARKER) + r"(?::\s*([^\]]*?)\s*)?\]")
# One streamed piece per token, leading whitespace kept: the pieces join to the text.
_PIECE = re.compile(r"\s*(?:\w+|[^\w\s])")
# A required argument's placeholder, by its JSON schema type.
_PLACEHOLDERS: dict[str, Any] = {
    "string": "simulated",
    "integer": 1,
    "number": 1.5,
    "boolean": True,
    "array": [],
    "object": {},
}


def count_tokens(text: str) -> int:
    return len(_TOKEN.findall(text))


def _content_text(message: Any) -> str:
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _message_text(message: Any) -> str:
    """A message's text as the prompt holds it: its content, and the name and arguments
    of each tool call an assistant message made (its content may then be None)."""
    calls = message.get("tool_calls") if isinstance(message, dict) else None
    functions = [c.get("function") or {} for c in calls or [] if isinstance(c, dict)]
    texts = [_content_text(message)]
    texts += [f"{f.get('name') or ''} {f.get('arguments') or ''}" for f in functions]
    return " ".join(t for t in texts if t)


def _role(message: Any) -> str:
    return str(message.get("role", "")) if isinstance(message, dict) else ""


def _prompt_words(prompt: Any) -> list[str]:
    """A completions prompt's tokens, for the prefix cache: text words or token ids."""
    if isinstance(prompt, str):
        return _TOKEN.findall(prompt)
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
        return [str(token) for token in prompt]
    if isinstance(prompt, list) and prompt:
        return _prompt_words(prompt[0])  # a batch: its first prompt
    return []


def _prompt_tokens(prompt: Any) -> int:
    """Token count of a completions prompt: text, token ids, or a batch of either."""
    if isinstance(prompt, str):
        return count_tokens(prompt)
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
        return len(prompt)
    if isinstance(prompt, list):
        return sum(_prompt_tokens(p) for p in prompt)
    return 0


def _embedding_inputs(value: Any) -> list[list[str]] | None:
    """An embeddings `input` as each input's words (token ids as words)."""
    if isinstance(value, str) or (isinstance(value, list) and value and isinstance(value[0], int)):
        value = [value]
    if not isinstance(value, list) or not value:
        return None
    return [_prompt_words(item) for item in value]


def _hashed(words: list[str], dim: int) -> list[float]:
    """Feature hashing: each lower-cased word adds one to a bucket; unit length."""
    vector = [0.0] * dim
    for word in words:
        digest = hashlib.blake2b(word.lower().encode(), digest_size=8).digest()
        vector[int.from_bytes(digest, "little") % dim] += 1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [round(v / norm, 6) for v in vector]


def _error(message: str, param: str | None = None, code: int = 400) -> ErrorResponse:
    return ErrorResponse(
        error=ErrorInfo(message=message, type="BadRequestError", param=param, code=code)
    )


def _sse(chunk: Any) -> str:
    return f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"


def _placeholder_text(count: int) -> list[str]:
    """`count` placeholder words, each after a space but the first."""
    return [("" if i == 0 else " ") + _WORDS[i % len(_WORDS)] for i in range(count)]


def _tool_to_call(
    request: ChatCompletionRequest, mode: str
) -> tuple[FunctionDefinition, str] | ErrorResponse | None:
    """The function a chat answer calls and how tool_choice chose it ("auto", "required"
    or "named"); None for a text answer; the error for a marker naming no offered tool.
    `mode` is SimulatedEngineConfig.tool_calls."""
    choice, messages = request.tool_choice, request.messages or []
    if not request.tools or choice == "none" or (messages and _role(messages[-1]) == "tool"):
        return None
    functions = {tool.function.name: tool.function for tool in request.tools}
    first = request.tools[0].function
    if isinstance(choice, ChatCompletionNamedToolChoiceParam):
        return functions[choice.function.name], "named"  # vLLM's validation checked the name
    if choice == "required":
        return first, "required"
    if mode == "never":
        return None
    user_text = next((_message_text(m) for m in reversed(messages) if _role(m) == "user"), "")
    marker = _MARKER.search(user_text)
    if marker is not None and marker.group(1):
        name = marker.group(1)
        if name not in functions:
            offered = ", ".join(functions)
            return _error(
                f"{marker.group(0)} names no offered tool; offered: {offered}", "messages"
            )
        return functions[name], "auto"
    return (first, "auto") if marker is not None or mode == "always" else None


def _placeholder(schema: Any) -> Any:
    """A value of a JSON schema's type: an enum's first value, else by `type`, else None."""
    if not isinstance(schema, dict):
        return None
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    kinds = schema.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds]  # ["string", "null"] is a string
    return next(
        (_PLACEHOLDERS[k] for k in kinds if isinstance(k, str) and k in _PLACEHOLDERS), None
    )


def _arguments(function: FunctionDefinition) -> str:
    """A call's arguments: a JSON object with a placeholder for each required parameter."""
    schema = function.parameters if isinstance(function.parameters, dict) else {}
    properties = schema.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    required = [name for name in schema.get("required") or [] if isinstance(name, str)]
    return json.dumps({name: _placeholder(properties.get(name)) for name in required})


@dataclass(frozen=True)
class _Shape:
    """How one endpoint's answers look, in vLLM's own models: whole, and chunk by chunk.
    A fixed answer (a tool call's) also says what it is: its pieces and finish reason."""

    id_prefix: str
    response: type
    whole_choice: Callable[[int, str, str], Any]  # (index, text, finish reason)
    chunk: type
    token_choice: Callable[[int, str], Any]  # (index, token)
    final_choice: Callable[[int, str], Any]  # (index, finish reason)
    first_choice: Callable[[int], Any] | None = None  # chat's role chunk
    pieces: tuple[str, ...] = ()  # a fixed answer's tokens, else placeholder words
    finish_reason: str = "stop"  # a fixed answer's


_CHAT = _Shape(
    id_prefix="chatcmpl",
    response=ChatCompletionResponse,
    whole_choice=lambda i, text, reason: ChatCompletionResponseChoice(
        index=i, message=ChatMessage(role="assistant", content=text), finish_reason=reason
    ),
    chunk=ChatCompletionStreamResponse,
    token_choice=lambda i, token: ChatCompletionResponseStreamChoice(
        index=i, delta=DeltaMessage(content=token)
    ),
    final_choice=lambda i, reason: ChatCompletionResponseStreamChoice(
        index=i, delta=DeltaMessage(), finish_reason=reason
    ),
    first_choice=lambda i: ChatCompletionResponseStreamChoice(
        index=i, delta=DeltaMessage(role="assistant", content="")
    ),
)
_COMPLETION = _Shape(
    id_prefix="cmpl",
    response=CompletionResponse,
    whole_choice=lambda i, text, reason: CompletionResponseChoice(
        index=i, text=text, finish_reason=reason
    ),
    chunk=CompletionStreamResponse,
    token_choice=lambda i, token: CompletionResponseStreamChoice(index=i, text=token),
    final_choice=lambda i, reason: CompletionResponseStreamChoice(
        index=i, text="", finish_reason=reason
    ),
)


def _tool_call_shape(function: FunctionDefinition, chosen: str) -> _Shape:
    """Chat answers that call `function` as vLLM answers them: whole, content None under
    auto and "" when forced; streamed, the call's id and name (on the empty first piece:
    one token), then its arguments token by token. Named calls finish "stop", as OpenAI's."""
    name, arguments, call_id = function.name, _arguments(function), make_tool_call_id()
    content = None if chosen == "auto" else ""

    def whole(i: int, text: str, reason: str) -> ChatCompletionResponseChoice:
        call = ToolCall(id=call_id, function=FunctionCall(name=name, arguments=text))
        message = ChatMessage(role="assistant", content=content, tool_calls=[call])
        return ChatCompletionResponseChoice(index=i, message=message, finish_reason=reason)

    def piece(i: int, text: str) -> ChatCompletionResponseStreamChoice:
        if text:
            delta = DeltaToolCall(index=0, function=DeltaFunctionCall(arguments=text))
        else:
            header = DeltaFunctionCall(name=name, arguments="")
            delta = DeltaToolCall(index=0, id=call_id, type="function", function=header)
        return ChatCompletionResponseStreamChoice(index=i, delta=DeltaMessage(tool_calls=[delta]))

    return dataclasses.replace(
        _CHAT,
        whole_choice=whole,
        token_choice=piece,
        pieces=("", *_PIECE.findall(arguments)),
        finish_reason="stop" if chosen == "named" else "tool_calls",
    )


class SimulatedEngine(LLMEngine):
    """Generates placeholder tokens on a timetable instead of running a model."""

    def __init__(self, llm_config):
        self._model_id = llm_config.model_id
        self._config = SimulatedEngineConfig.model_validate(
            llm_config.experimental_configs.get(SIMULATED_ENGINE_KEY, {})
        )
        self._slots: asyncio.Semaphore | None = None
        self._running = 0
        self._blocks: OrderedDict[int, None] = OrderedDict()  # block hashes, oldest first

    async def start(self) -> None:
        self._slots = asyncio.Semaphore(self._config.max_num_seqs)

    def routing_stats(self) -> dict:
        return {}

    async def resolve_lora(self, lora_model) -> None:
        raise ValueError("the simulated engine does not load LoRA adapters")

    async def reset_prefix_cache(self) -> None:
        return None

    def _cached_tokens(self, words: list[str], salt: str | None) -> int:
        """Prompt tokens found in the cache (whole blocks from the start); the prompt's
        blocks are cached for the next request. The salt starts every chain, as in vLLM:
        the same prompt under another salt shares nothing."""
        parent: Any = salt
        cached, matching = 0, True
        for start in range(0, len(words) - _BLOCK_TOKENS + 1, _BLOCK_TOKENS):
            parent = hash((parent, *words[start : start + _BLOCK_TOKENS]))
            if matching and parent in self._blocks:
                cached += _BLOCK_TOKENS
                self._blocks.move_to_end(parent)
            else:
                matching = False
                self._blocks[parent] = None
        while len(self._blocks) > _CACHED_BLOCKS:
            self._blocks.popitem(last=False)
        return cached

    def _step_s(self, base_ms: float) -> float:
        load = 1.0 + self._config.slowdown_per_seq * max(self._running - 1, 0)
        return base_ms * load / 1000.0

    def _plan(self, prompt_tokens: int, requested: int | None) -> tuple[int, str] | ErrorResponse:
        """How many tokens to produce and why it stops, or the error vLLM would give."""
        limit = self._config.max_model_len
        if prompt_tokens >= limit:
            return _error(
                f"This model's maximum context length is {limit} tokens. However, your "
                f"prompt contains {prompt_tokens} input tokens, which exceeds this limit "
                "even without any output tokens. Please reduce the length of the input prompt.",
                param="input_tokens",
            )
        room = limit - prompt_tokens
        if requested is not None and requested < 1:
            return _error("max_tokens must be at least 1", param="max_tokens")
        if requested is None:
            wanted, reason = self._config.default_max_tokens, "stop"
        else:
            wanted, reason = requested, "length"
        if wanted > room:
            return room, "length"
        return wanted, reason

    async def _tokens(self, pieces: list[str]) -> AsyncGenerator[str, None]:
        """Yield the pieces, one token each, on the configured timetable, holding a slot."""
        assert self._slots is not None, "engine not started"
        async with self._slots:
            self._running += 1
            try:
                await asyncio.sleep(self._step_s(self._config.ttft_ms))
                for index, piece in enumerate(pieces):
                    if index:
                        await asyncio.sleep(self._step_s(self._config.tpot_ms))
                    yield piece
            finally:
                self._running -= 1

    async def _texts(self, n: int, pieces: list[str]) -> list[str]:
        results = await asyncio.gather(*(self._collect(pieces) for _ in range(n)))
        return list(results)

    async def _collect(self, pieces: list[str]) -> str:
        return "".join([token async for token in self._tokens(pieces)])

    async def chat(self, request: ChatCompletionRequest, raw_request_info=None):
        prompt_tokens = sum(
            count_tokens(_message_text(m)) + _CHAT_TOKENS_PER_MESSAGE for m in request.messages
        )
        requested = (
            request.max_completion_tokens
            if request.max_completion_tokens is not None
            else request.max_tokens
        )
        words = [w for m in request.messages for w in (_role(m), *_TOKEN.findall(_message_text(m)))]
        call = _tool_to_call(request, self._config.tool_calls)
        if isinstance(call, ErrorResponse):
            yield call
            return
        shape = _CHAT if call is None else _tool_call_shape(*call)
        async for item in self._answer(shape, request, prompt_tokens, requested, words):
            yield item

    async def completions(self, request: CompletionRequest, raw_request_info=None):
        prompt_tokens = _prompt_tokens(request.prompt)
        words = _prompt_words(request.prompt)
        async for item in self._answer(
            _COMPLETION, request, prompt_tokens, request.max_tokens, words
        ):
            yield item

    async def _answer(
        self,
        shape: _Shape,
        request: Any,
        prompt_tokens: int,
        requested: int | None,
        words: list[str],
    ) -> AsyncGenerator[Any, None]:
        """One request's answer in `shape`: whole, or streamed as vLLM streams it. A fixed
        answer (a tool call) is checked against the context length, not cut at max_tokens."""
        plan = self._plan(prompt_tokens, requested)
        if isinstance(plan, ErrorResponse):
            yield plan
            return
        count, reason = plan
        pieces = _placeholder_text(count)
        if shape.pieces:
            pieces, reason = list(shape.pieces), shape.finish_reason
        n = request.n or 1
        cached = self._cached_tokens(words, getattr(request, "cache_salt", None))
        usage = UsageInfo(
            prompt_tokens=prompt_tokens,
            completion_tokens=len(pieces) * n,
            total_tokens=prompt_tokens + len(pieces) * n,
            prompt_tokens_details=PromptTokenUsageInfo(cached_tokens=cached),
        )
        if not request.stream:
            texts = await self._texts(n, pieces)
            choices = [shape.whole_choice(i, text, reason) for i, text in enumerate(texts)]
            yield shape.response(model=self._model_id, choices=choices, usage=usage)
            return
        response_id = f"{shape.id_prefix}-{uuid.uuid4().hex}"
        created = int(time.time())

        def chunk(choices: list, usage_info: UsageInfo | None = None) -> str:
            return _sse(
                shape.chunk(
                    id=response_id,
                    created=created,
                    model=self._model_id,
                    choices=choices,
                    usage=usage_info,
                )
            )

        announced: set[int] = set()
        async for i, token in self._interleave(n, pieces):
            if shape.first_choice is not None and i not in announced:
                # As vLLM: the role chunk goes out with the first token, after the wait
                # for a slot and the prefill, so clients time the first token right.
                announced.add(i)
                yield chunk([shape.first_choice(i)])
            yield chunk([shape.token_choice(i, token)])
        for i in range(n):
            yield chunk([shape.final_choice(i, reason)])
        if request.stream_options and request.stream_options.include_usage:
            yield chunk([], usage)

    async def _interleave(self, n: int, pieces: list[str]) -> AsyncGenerator[tuple[int, str], None]:
        """Merge the token streams of `n` choices in the order tokens are produced."""
        queue: asyncio.Queue[tuple[int, str] | None] = asyncio.Queue()

        async def produce(index: int) -> None:
            try:
                async for token in self._tokens(pieces):
                    await queue.put((index, token))
            finally:
                await queue.put(None)

        tasks = [asyncio.create_task(produce(i)) for i in range(n)]
        try:
            finished = 0
            while finished < n:
                item = await queue.get()
                if item is None:
                    finished += 1
                else:
                    yield item
        finally:
            for task in tasks:
                task.cancel()

    async def embeddings(self, request, raw_request_info=None):
        """Each input's words hashed into `embedding_dim` buckets (normalized), after one
        first token's time in an engine slot: texts sharing words are near, like a real
        embedding model's, so retrieval over it is not noise."""
        texts = _embedding_inputs(getattr(request, "input", None))
        if texts is None:
            yield _error("input must be a text, token ids, or a list of either", param="input")
            return
        counts = [len(words) for words in texts]
        if (longest := max(counts, default=0)) >= self._config.max_model_len:
            yield _error(
                f"This model's maximum context length is {self._config.max_model_len} tokens; "
                f"an input has {longest}.",
                param="input",
            )
            return
        assert self._slots is not None, "engine not started"
        async with self._slots:
            await asyncio.sleep(self._step_s(self._config.ttft_ms))
        dim = self._config.embedding_dim
        yield EmbeddingResponse(
            model=self._model_id,
            data=[
                EmbeddingResponseData(index=i, embedding=_hashed(words, dim))
                for i, words in enumerate(texts)
            ],
            usage=UsageInfo(prompt_tokens=sum(counts), total_tokens=sum(counts)),
        )

    async def transcriptions(self, request, raw_request_info=None):
        yield _error(f"The model {self._model_id!r} does not support the Transcriptions API")


class SimulatedLLMServer(LLMServer):
    """Ray's LLMServer with the simulated engine plugged in (chosen per model by config)."""

    _default_engine_cls = SimulatedEngine

    async def __init__(self, *args: Any, **kwargs: Any) -> None:
        await super().__init__(*args, **kwargs)
        quiet_terminal()

    @classmethod
    def get_deployment_options(cls, llm_config) -> dict:
        """Serve options without vLLM's placement group: the engine is this actor itself."""
        options = copy.deepcopy(llm_config.deployment_config)
        bundles = (llm_config.placement_group_config or {}).get("bundles") or [{"CPU": 1}]
        actor_options = options.setdefault("ray_actor_options", {})
        actor_options.setdefault("num_cpus", bundles[0].get("CPU", 1))
        if llm_config.runtime_env:
            actor_options["runtime_env"] = llm_config.runtime_env
        return options
