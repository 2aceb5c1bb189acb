"""vLLM's engine in a worker process of the vLLM environment, answering chat requests over stdin/stdout.

    <vLLM env python> pipeline/caption/engine_worker.py [--chat-template FILE] -- <vLLM engine flags>

The `caption.engine: in_process` counterpart of a vLLM server: the same engine flags (parsed by vLLM's own
EngineArgs parser), the same OpenAI chat messages, but no HTTP front end: requests arrive as JSON lines
`{"id": n, "body": <chat completion body>}` and are rendered and queued with `LLM.enqueue_chat`, the engine is
stepped as `LLM.generate` steps it (continuous batching over everything queued), and each finished request is
answered with `{"id": n, "status": 200, "body": <the OpenAI chat response's choices and usage>}`, or status 400
and the engine's message for a request it refuses (what the server would answer over HTTP). The first line out is
`{"ready": true}`. End of stdin ends the worker once nothing is left in flight. Runs with the standard library and
vLLM only (not the project's env).
"""
import argparse
import json
import os
import queue
import sys
import threading

END = None
# Answers go to the stdout the parent reads; everything else written to fd 1 (vLLM logs there, and so may the
# engine's child processes) goes to stderr, the worker's log. Set in main() before vLLM is imported.
ANSWERS = sys.stdout


def read_requests(inbox: queue.Queue) -> None:
    """Thread: every stdin line onto the inbox, then END."""
    for line in sys.stdin:
        if line.strip():
            inbox.put(json.loads(line))
    inbox.put(END)


def answer(message: dict) -> None:
    ANSWERS.write(json.dumps(message) + "\n")
    ANSWERS.flush()


def keep_stdout_for_answers() -> None:
    global ANSWERS
    ANSWERS = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr


def sampling_params(body: dict):
    from vllm import SamplingParams

    return SamplingParams(temperature=body["temperature"], top_p=body["top_p"], max_tokens=body["max_tokens"],
                          seed=body.get("seed"))


def engine_kwargs(flags: list[str]) -> dict:
    """The engine flags a user set (as a server would parse them), as LLM keyword arguments."""
    from vllm.engine.arg_utils import EngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = EngineArgs.add_cli_args(FlexibleArgumentParser())
    parsed = vars(parser.parse_args(flags))
    return {name: value for name, value in parsed.items() if value != parser.get_default(name)}


def output_id(engine_id: str) -> str:
    """The id a request's outputs carry: vLLM 0.32's add_request returns `<id>-<8 random characters>` (its
    assign_request_id) while RequestOutput.request_id is `<id>`."""
    head, _, tail = engine_id.rpartition("-")
    return head if head and len(tail) == 8 else engine_id


def serve(llm, chat_template: str | None) -> None:
    """Queue what arrives, step the engine while anything is in flight, answer each finished request."""
    from vllm.exceptions import VLLMClientError  # e.g. VLLMValidationError: a prompt over max_model_len

    refused = (ValueError, TypeError, OSError, VLLMClientError)  # the errors of one request, not of the engine
    engine = llm.llm_engine
    inbox: queue.Queue = queue.Queue()
    threading.Thread(target=read_requests, args=(inbox,), daemon=True).start()
    ids: dict[str, int] = {}  # the request id its outputs carry -> the caller's id
    open_input = True
    answer({"ready": True})
    while open_input or engine.has_unfinished_requests():
        block = open_input and not engine.has_unfinished_requests()
        while open_input:
            try:
                message = inbox.get(block=block)
            except queue.Empty:
                break
            block = False
            if message is END:
                open_input = False
                break
            body = message["body"]
            try:
                [request_id] = llm.enqueue_chat([body["messages"]], [sampling_params(body)], use_tqdm=False,
                                                chat_template=chat_template)
            except refused as err:  # a request the engine refuses (a bad image, too long): the server's HTTP 400
                answer({"id": message["id"], "status": 400, "body": f"{type(err).__name__}: {err}"})
                continue
            ids[output_id(request_id)] = message["id"]
        if engine.has_unfinished_requests():
            for output in engine.step():
                if output.finished:
                    completion = output.outputs[0]
                    choice = {"message": {"content": completion.text}, "finish_reason": completion.finish_reason}
                    answer({"id": ids.pop(output.request_id), "status": 200, "body": {
                        "choices": [choice], "usage": {"completion_tokens": len(completion.token_ids)}}})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chat-template", help="a .jinja chat template file (default: the model's)")
    parser.add_argument("flags", nargs=argparse.REMAINDER, help="vLLM engine flags, after --")
    args = parser.parse_args()
    flags = args.flags[1:] if args.flags[:1] == ["--"] else args.flags
    keep_stdout_for_answers()
    from vllm import LLM

    llm = LLM(**engine_kwargs(flags))
    template = open(args.chat_template).read() if args.chat_template else None
    serve(llm, template)


if __name__ == "__main__":
    main()
