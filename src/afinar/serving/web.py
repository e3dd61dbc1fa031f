"""The web page's routes: the page itself, the key form, personas and interviews, and the studio.

The page (resources/web: one HTML file, one script, one stylesheet, no build step and nothing
fetched from the internet) talks to the same /v1/chat/completions as any OpenAI client; the
routes here give it what the OpenAI API has no words for.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse

from afinar.errors import AfinarError
from afinar.serving.protocol import KEY_COOKIE, ApiError, json_object

STATIC = ("app.js", "style.css")
LOGIN = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>afinar: API key</title>
<link rel="stylesheet" href="/static/style.css"></head><body><main class="login"><h1>afinar</h1>
<p>This server needs its API key.</p><form method="post" action="/login">
<input type="password" name="key" placeholder="API key" autofocus required><button>Enter</button></form></main></body></html>"""


def web_dir() -> Path:
    return Path(str(resources.files("afinar") / "resources" / "web"))


def login_page() -> HTMLResponse:
    return HTMLResponse(LOGIN, status_code=401)


def add_web_routes(app, engine, studio) -> None:
    @app.get("/")
    async def index():
        return FileResponse(web_dir() / "index.html", media_type="text/html")

    @app.get("/static/{name}")
    async def static(name: str):
        if name not in STATIC:
            raise ApiError(404, f"no file {name}", code="not_found")
        return FileResponse(web_dir() / name)

    @app.post("/login")
    async def login(request: Request):
        form = (await request.body()).decode("utf-8", "replace")
        from urllib.parse import parse_qs

        key = (parse_qs(form).get("key") or [""])[0]
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(KEY_COOKIE, key, httponly=True, samesite="strict")
        return response

    @app.get("/studio/personas")
    async def personas():
        return {"personas": [_persona(engine, name) for name in engine.names], "studio": studio is not None}

    @app.post("/studio/interview")
    async def interview(request: Request):
        from afinar.assistant.interview import assemble

        body = await _json(request)
        p = engine.persona(body.get("model") or None)
        answers = body.get("answers")
        if p.recipe.interview is None or not isinstance(answers, list):
            raise ApiError(400, f"{p.name} has no interview, or 'answers' is not a list", "answers")
        return {"prompt": assemble(p.recipe.interview.questions, [str(a) for a in answers], p.recipe.interview.template)}

    if studio is not None:
        _studio_routes(app, engine, studio)

    @app.exception_handler(AfinarError)
    async def _afinar_error(request: Request, exc: AfinarError):
        return JSONResponse(ApiError(400, str(exc), code="afinar_error").body(), status_code=400)


def _studio_routes(app, engine, studio) -> None:
    import asyncio

    @app.post("/studio/datasets")
    async def upload(request: Request):
        form = await request.form()
        upload = form.get("file")
        if upload is None or not hasattr(upload, "read"):
            raise ApiError(400, "send the dataset as a multipart form field named 'file'", "file")
        path = studio.save_upload(upload.filename, await upload.read())
        report = await asyncio.to_thread(studio.check, path)
        if report["ok"]:  # the same file uploaded again, edited: its runs serve the new records at once
            reindexed = await asyncio.to_thread(studio.reindex, path)
            for run in reindexed:
                await asyncio.to_thread(engine.reload_index, run)
            report["reindexed"] = [run.name for run in reindexed]
        return report

    @app.post("/studio/train")
    async def start(request: Request):
        body = await _json(request)
        job = studio.start_training(str(body.get("dataset", "")), body.get("name") or None, body.get("epochs") or None)
        return job.to_dict()

    @app.get("/studio/jobs/{job_id}")
    async def job(job_id: str):
        return studio.job(job_id).to_dict()

    @app.get("/studio/jobs/{job_id}/report")
    async def report(job_id: str):
        path = studio.job(job_id).run_dir / "eval" / "report.html"
        if not path.exists():
            raise ApiError(404, "the eval report is not ready yet", code="not_ready")
        return FileResponse(path, media_type="text/html")

    @app.post("/studio/jobs/{job_id}/load")
    async def load(job_id: str):
        job = studio.job(job_id)
        if job.state != "done":
            raise ApiError(409, f"{job.name} is not trained yet ({job.state})", code="not_ready")
        if job.name not in engine.names:
            await asyncio.to_thread(engine.add_run, job.run_dir)
        return _persona(engine, job.name)


def _persona(engine, name: str) -> dict:
    p = engine.persona(name)
    interview = p.recipe.interview.questions if p.recipe.interview else []
    return {"name": name, "mode": p.recipe.guard.mode, "interview": interview, "incomplete": p.incomplete}


async def _json(request) -> dict:
    return json_object(await request.body(), empty=b"{}")
