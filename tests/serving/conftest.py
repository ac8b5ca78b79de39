"""Serving fixtures: the API app over the tiny engine, served by uvicorn on a free localhost port."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

API_KEY = "sk-ember-test"
MODEL = "tiny"


@pytest.fixture(scope="module")
def api(tiny_engine):
    from ember.serving.api import create_app
    from ember.serving.background import serve_in_thread

    app = create_app(tiny_engine, MODEL, api_key=API_KEY)
    with serve_in_thread(app) as url:
        yield SimpleNamespace(url=url, app=app, engine=tiny_engine, scheduler=app.state.server.scheduler)


@pytest.fixture
def client(api):
    from openai import OpenAI

    return OpenAI(base_url=f"{api.url}/v1", api_key=API_KEY, max_retries=0, timeout=60)
