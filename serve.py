"""Serve the character over an OpenAI-compatible HTTP API (SillyTavern, Open WebUI, `openai` clients).

    python serve.py -m SmolLM2-135M-Instruct -l bob --name Bob
    python serve.py -m SmolLM2-135M-Instruct -l bob --name Bob --memory --port 5001

Endpoints on http://127.0.0.1:5001/v1: /models, /chat/completions and
/completions, streamed (SSE) or not.  Chat messages become the `Name:line`
prompt the adapter was trained on, replies stop as in chat.py, requests are
served one at a time in arrival order; with --memory each user (the request's
`user` field or an X-Charlora-User header) is remembered as in chat.py --memory.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from charlora import cli


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-m", "--model_name", required=True, help="base model folder inside the models folder")
    p.add_argument("-l", "--lora_name", action="extend", nargs="+", help="adapter folder(s) inside the loras folder (or paths)")
    p.add_argument("--lora_scale", type=float, nargs="+", help="multiply each adapter's effect (one factor, or one per adapter)")
    p.add_argument("-n", "--name", required=True, help="the character who answers, as written before the colon")
    p.add_argument("-u", "--user", default="User", help="the user's name when a request gives none")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface, e.g. for Docker)")
    p.add_argument("--port", type=int, default=5001, help="port to listen on")
    p.add_argument("--served_name", help="model id in /v1/models (default: the adapter's name, else the model's)")
    p.add_argument("-r", "--rounds", type=int, default=5, help="lines of conversation in each prompt (as in training)")
    p.add_argument("--max_new_tokens", type=int, default=120, help="reply length when a request sets no max_tokens")
    p.add_argument("--max_tokens_limit", type=int, default=512, help="the most max_tokens a request may ask for")
    p.add_argument("--temperature", type=float, default=0.7, help="when a request sets none (0: greedy)")
    p.add_argument("--top_p", type=float, default=0.9, help="when a request sets none")
    p.add_argument("--repetition_penalty", type=float, default=1.1, help="when a request sets none")
    p.add_argument("--pcw", type=int, default=0, help="read recalled memories and older history in N parallel context windows (0: off)")
    p.add_argument("--max_queue", type=int, default=64, help="requests waiting for the model before new ones get HTTP 503")
    p.add_argument("--quantization", choices=["auto", "8bit", "4bit", "none"], default="auto")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp16", "fp32"], default="auto")
    p.add_argument("--models_dir", help="models folder (default: models/ or user_data/models/)")
    p.add_argument("--loras_dir", help="adapters folder (default: loras/ or user_data/loras/)")
    p.add_argument("--trust_remote_code", action="store_true", help="allow model code shipped inside the model folder to run")
    m = p.add_argument_group("memory (off unless --memory or --memory_dir)")
    m.add_argument("--memory", action="store_true", help="remember each user across requests and restarts")
    m.add_argument("--memory_dir", help="folder of the memory files, one per character and user (default: memory/)")
    m.add_argument("--recall_method", choices=["hybrid", "keyword", "embedding"], default="hybrid")
    m.add_argument("--embedder", choices=["auto", "minilm", "none"], default="auto")
    m.add_argument("--summarizer", choices=["auto", "model", "extractive"], default="auto")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    return cli.run(lambda: serve(args), interrupted="\nstopped")


def serve(args: argparse.Namespace) -> int:
    from charlora.run_folder import ensure_writable
    from charlora.server import bound_port, listen

    config = server_config(args)  # a bad flag is named before the port is taken
    if config.memory is not None:  # else the server starts and every request fails with a 500
        ensure_writable(config.memory.memory_dir)
    sockets = listen(args.host, args.port)
    app = build(config)
    import uvicorn

    print(f"serving {config.description} as model {config.model_id!r} on http://{args.host}:{bound_port(sockets)}/v1", file=sys.stderr)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=sockets)
    return 0


def server_config(args: argparse.Namespace):
    """The checked charlora.server.ServerConfig for the parsed flags (no model read)."""
    from dataclasses import replace

    from charlora import server
    from charlora.chat import memory_settings
    from charlora.config import ChatConfig, from_args

    # The flags share chat.py's names, so they fill a ChatConfig as chat.py's do;
    # a temperature of 0 means greedy.
    cfg = from_args(ChatConfig, args)
    cfg = replace(cfg, sampling=replace(cfg.sampling, greedy=cfg.sampling.temperature == 0))
    model_id = args.served_name or (Path(args.lora_name[-1]).name if args.lora_name else args.model_name)
    config = server.check_config(server.ServerConfig(cfg, model_id, args.max_tokens_limit, args.max_queue,
                                                     None, args.embedder))
    return replace(config, memory=memory_settings(config.defaults))


def build(config):
    """The app for a checked ServerConfig (server_config); loading fills in its description."""
    from charlora import server
    from charlora.adapter import load_with_adapters
    from charlora.errors import quiet_libraries

    quiet_libraries(progress_bars=False)
    cfg = config.defaults
    model, tokenizer, config.description = load_with_adapters(cfg, cfg.lora_name or [], cfg.lora_scale,
                                                              lambda message: print(message, file=sys.stderr))
    return server.make_app(server.Engine(model, tokenizer, config))


if __name__ == "__main__":
    sys.exit(main())
