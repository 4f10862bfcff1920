"""The API as real clients see it, through the running stack: the openai SDK
(sync and async), LangChain and litellm, each reading what it reads from a
real provider: model lookup, usage, reasoning, request ids, and errors of
the right class, not retried when the request itself is at fault. The engine
(llama.cpp on the tiny model) answers through a grammar that writes a
<think> block first, as DeepSeek-R1 does."""

import asyncio
import os

import httpx
import openai
import pytest

from support.apicases import REQUEST_REFUSALS

pytestmark = pytest.mark.stack
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm fetches a price list from GitHub otherwise


def sdk(stack, **options) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack["api"] + "/v1", api_key=stack["env"]["API_KEY"], timeout=120, **options)


def counted(stack, status: str) -> float:
    text = httpx.get(stack["api"] + "/metrics", headers={"Authorization": f"Bearer {stack['env']['API_KEY']}"}).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith('kta_api_requests_total{endpoint="chat"') and f'status="{status}"' in line)


def test_sdk_retrieves_every_model_it_lists(stack):
    client = sdk(stack)
    for model in client.models.list():
        assert client.models.retrieve(model.id).id == model.id
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


@pytest.mark.parametrize("extra, param", REQUEST_REFUSALS)
def test_a_request_the_engine_cannot_serve_is_a_bad_request_sent_once(stack, extra, param):
    client = sdk(stack, max_retries=2)
    before = counted(stack, "400")
    request = {"model": "DeepSeek-R1", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}], **extra}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(**request)
    assert err.value.body["param"] == param and err.value.request_id.startswith("req_")
    assert counted(stack, "400") == before + 1, "the SDK retried a request the API called the client's fault"


def test_sdk_sees_request_ids_and_streamed_usage(stack):
    client = sdk(stack)
    reply = client.chat.completions.create(model="DeepSeek-R1", max_tokens=8, seed=7,
                                           messages=[{"role": "user", "content": "hello"}])
    assert reply._request_id.startswith("req_") and reply.usage.completion_tokens >= 1

    async def streamed():
        client = openai.AsyncOpenAI(base_url=stack["api"] + "/v1", api_key=stack["env"]["API_KEY"], timeout=120)
        chunks = [chunk async for chunk in await client.chat.completions.create(
            model="DeepSeek-R1", max_completion_tokens=12, stream=True, stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "hello"}])]
        await client.close()
        return chunks

    chunks = asyncio.run(streamed())
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_langchain_gets_usage_and_the_answer(stack):
    from langchain_openai import ChatOpenAI
    chat = ChatOpenAI(model="DeepSeek-R1", base_url=stack["api"] + "/v1", api_key=stack["env"]["API_KEY"],
                      max_tokens=48, timeout=120, max_retries=0)
    message = chat.invoke("hello")
    assert message.usage_metadata["output_tokens"] >= 1 and message.usage_metadata["input_tokens"] >= 1
    # ChatOpenAI keeps only `content`: the DeepSeek-R1 name keeps the reasoning inline there.
    assert message.content.startswith("<think>")
    assert message.response_metadata["model_name"] == "DeepSeek-R1"


def test_litellm_reads_reasoning_apart_and_usage(stack):
    import litellm
    reply = litellm.completion(model="openai/deepseek-reasoner", api_base=stack["api"] + "/v1",
                               api_key=stack["env"]["API_KEY"], max_tokens=48,
                               messages=[{"role": "user", "content": "hello"}])
    message = reply.choices[0].message
    assert message.reasoning_content and "<think>" not in (message.content or "")
    assert reply.usage.completion_tokens >= 1
    with pytest.raises(litellm.BadRequestError):
        litellm.completion(model="openai/DeepSeek-R1", api_base=stack["api"] + "/v1", api_key=stack["env"]["API_KEY"],
                           n=3, messages=[{"role": "user", "content": "hello"}], num_retries=0)
