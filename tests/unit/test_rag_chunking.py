"""Documents into chunks: by section, within size, overlapping, code fences whole."""

from __future__ import annotations

import itertools

from serve_app.workflows.rag.chunking import chunk_document

GUIDE = (
    """# Guide
Intro paragraph about the gateway.

## Install
"""
    + "Install step sentence number one is here. " * 30
    + """

```bash
# not a heading
pip install first
```

## Use
### GPU
Serve on a GPU with vLLM.
"""
)


def test_chunks_keep_their_heading_path_and_stay_within_size():
    chunks = chunk_document(GUIDE, max_chars=400, overlap_chars=80)
    assert all(len(c.text) <= 400 for c in chunks), [len(c.text) for c in chunks]
    headings = [c.heading for c in chunks]
    assert headings[0] == "Guide" and headings[-1] == "Guide > Use > GPU"
    assert "Guide > Install" in headings
    assert "# not a heading" in "".join(c.text for c in chunks)  # a fence is not a section
    assert chunks[-1].indexed() == "Guide > Use > GPU\n\nServe on a GPU with vLLM."


def test_consecutive_chunks_of_a_section_overlap_from_a_word_start():
    install = [c for c in chunk_document(GUIDE, 400, 80) if c.heading == "Guide > Install"]
    assert len(install) >= 3
    for before, after in itertools.pairwise(install):
        start = after.text.split("\n\n")[0]
        assert before.text.endswith(start) and len(start) <= 80, (before.text, start)


def test_plain_text_is_one_section_and_a_blank_document_no_chunk():
    (chunk,) = chunk_document("Just a line of text.\nAnd another.", 1000, 150)
    assert chunk.heading == "" and chunk.indexed() == chunk.text
    assert chunk_document("\n\n  \n", 1000, 150) == []
