"""RAG on the shared stack: the demo collection of the project's docs (ingested by
`first gateway up`, embedded by the tiny vLLM embedding model), questions answered
from it through the official client, `first rag` against the gateway."""

from __future__ import annotations

import os
import subprocess

import httpx
import openai
import pytest

from tests.conftest import DEMO_COLLECTION, FIRST, INSIDERS, MEMBERS, REPO, SIMULATED_MODEL
from tests.support.pdf import write_pdf
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow
DEMO = DEMO_COLLECTION["name"]
DOCS = sorted((REPO / "docs").rglob("*.md"))
# Its words are those of one document: docs/batch.md.
QUESTION = "How do I cancel a batch, and what happens to the requests that already ran?"


@pytest.fixture(scope="module")
def demo(stack) -> httpx.Client:
    """A client of the stack with the demo collection ingested (it starts after READY)."""
    http = stack.http(stack.key("rag-reader", [MEMBERS, INSIDERS]))

    def ingested() -> dict:
        card = http.get(f"/v1/rag/collections/{DEMO}")
        assert card.status_code == 200, card.text
        assert card.json()["documents"] == len(DOCS), card.json()
        return card.json()

    eventually(ingested, 180, f"the {DEMO} collection", interval_s=2, retry_on=(AssertionError,))
    return http


def first_rag(stack, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FIRST_URL": stack.gateway_url, "FIRST_API_KEY": stack.api_key}
    return subprocess.run(
        [FIRST, "rag", *args], capture_output=True, text=True, timeout=300, env=env
    )


def test_the_demo_collection_holds_the_docs_embedded_by_the_tiny_embedding_model(demo):
    (card,) = [c for c in demo.get("/v1/rag/collections").json()["data"] if c["id"] == DEMO]
    assert card["embedding_model"] == "tiny-embed"
    assert card["chunks"] > len(DOCS)  # long documents are several chunks


def test_a_question_is_answered_from_the_document_that_holds_its_answer(stack, demo):
    client = openai.OpenAI(
        base_url=f"{stack.gateway_url}/v1/rag/{DEMO}",
        api_key=stack.key("rag-reader", [MEMBERS, INSIDERS]),
        max_retries=0,
    )
    answer = client.chat.completions.create(
        model=SIMULATED_MODEL, messages=[{"role": "user", "content": QUESTION}], max_tokens=8
    )
    assert answer.choices[0].message.content
    sources = answer.model_extra["first_sources"]
    assert [s["index"] for s in sources] == [1, 2, 3, 4]  # rag.top_k
    assert any(s["document"].endswith("docs/batch.md") for s in sources), sources
    assert all(s["text"] and s["title"] and s["score"] > 0 for s in sources)
    # The sources were the model's to read: its prompt grew by them.
    plain = openai.OpenAI(
        base_url=f"{stack.gateway_url}/v1", api_key=client.api_key, max_retries=0
    ).chat.completions.create(
        model=SIMULATED_MODEL, messages=[{"role": "user", "content": QUESTION}], max_tokens=8
    )
    assert answer.usage.prompt_tokens > plain.usage.prompt_tokens + 100

    # Streamed, the sources come first, then the answer's chunks.
    chunks = list(
        client.chat.completions.create(
            model=SIMULATED_MODEL,
            messages=[{"role": "user", "content": QUESTION}],
            max_tokens=8,
            stream=True,
            extra_body={"first_sources": 2},
        )
    )
    assert [s["index"] for s in chunks[0].model_extra["first_sources"]] == [1, 2]
    assert chunks[0].choices == []
    text = "".join(c.choices[0].delta.content or "" for c in chunks[1:] if c.choices)
    assert len(text.split()) == 8


def test_first_rag_ingests_files_once_searches_and_drops(stack, demo, tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "cooling.md").write_text("# Cooling\n\nThe cluster is cooled by river water.\n")
    (notes / "ignored.json").write_text("{}")
    write_pdf(notes / "power.pdf", [["Power", "The machine room draws two megawatts."]])
    collection = f"notes-{os.getpid()}"
    done = first_rag(stack, "ingest", str(notes), "--collection", collection)
    assert done.returncode == 0, done.stderr
    assert f"{collection}: 2 documents (2 new or changed, 0 unchanged)" in done.stderr
    again = first_rag(stack, "ingest", str(notes), "--collection", collection)
    assert f"{collection}: 2 documents (0 new or changed, 2 unchanged), 0 chunks" in again.stderr
    (card,) = [c for c in demo.get("/v1/rag/collections").json()["data"] if c["id"] == collection]
    assert card["documents"] == 2 and card["chunks"] == 2  # not duplicated

    found = first_rag(
        stack, "query", "How many megawatts does it draw?", "--collection", collection
    )
    assert found.returncode == 0, found.stderr
    assert found.stdout.splitlines()[0].endswith("power.pdf#0)"), found.stdout

    listed = first_rag(stack, "list")
    assert collection in listed.stdout and DEMO in listed.stdout
    assert first_rag(stack, "drop", collection).returncode == 0
    gone = first_rag(stack, "drop", collection)
    assert (
        gone.returncode == 1 and f"404: The collection '{collection}' does not exist" in gone.stderr
    )


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/rag/no-such-collection/chat/completions", {"model": SIMULATED_MODEL}),
        ("GET", "/v1/rag/collections/no-such-collection", None),
        ("POST", "/v1/rag/collections/no-such-collection/search", {"query": "x"}),
    ],
    ids=["chat", "get", "search"],
)
def test_a_collection_that_does_not_exist_is_a_404_in_the_openai_shape(demo, method, path, body):
    if body is not None and "model" in body:
        body = {**body, "messages": [{"role": "user", "content": "Hello"}]}
    response = demo.request(method, path, json=body)
    assert response.status_code == 404, response.text
    assert response.json()["error"] == {
        "message": "The collection 'no-such-collection' does not exist (GET /v1/rag/collections "
        "lists them).",
        "type": "invalid_request_error",
        "param": "collection",
        "code": "collection_not_found",
    }


def test_a_new_collection_without_an_embedding_model_that_answers_is_refused(demo):
    body = {"documents": [{"id": "a", "text": "words"}], "embedding_model": "no-such-model"}
    response = demo.post("/v1/rag/collections/never-made/documents", json=body)
    assert response.status_code == 404, response.text
    assert "no-such-model" in response.json()["error"]["message"]
    assert demo.get("/v1/rag/collections/never-made").status_code == 404
