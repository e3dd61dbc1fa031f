"""Serving: the assistant over HTTP, in OpenAI's shape, with a web page for people.

`api.py` is the FastAPI app (`/v1/chat/completions`, `/v1/models`, `/health`) over one
`Engine`; `protocol.py` validates requests and builds responses in OpenAI's shape; `web.py` adds
the page's routes (the chat, the key form, interviews) and `studio.py` its upload-check-train
jobs; `vllm.py` prints (or runs) the vLLM command that serves several adapters on a GPU.
"""
