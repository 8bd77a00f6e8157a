"""RAG: collections of document chunks on disk, searched by words and meaning, and chat
answered from them (serve_app/workflows/rag/service.py)."""
