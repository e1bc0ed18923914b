"""Prompt expander node: a short idea -> the detailed caption Wan (or the embedded model) was trained on."""
from __future__ import annotations

import logging
import os
import re

import folder_paths
from comfy_api.latest import io

from ..model.prompt_expander import FAMILIES, LANGUAGES, ON_ERROR, TASKS, LLMOptions, expand_prompt
from .errors import node_error
from .validation import SpacetimeNode

log = logging.getLogger("spacetime.nodes.prompt")

# Shown in the backend menu; expand_prompt accepts these spellings (model/prompt_expander/options.py).
BACKEND_CHOICES = ["rules", "openai-compatible", "local HF"]
INPUTS = ("prompt", "task", "model_family", "language", "seed", "max_words", "backend", "base_url", "model",
          "api_key_env", "on_error", "temperature", "images")


def llm_models_dir() -> str:
    """ComfyUI's ``models/LLM`` folder (registered under the name "LLM" if nothing did yet)."""
    default = os.path.join(folder_paths.models_dir, "LLM")
    if "LLM" not in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path("LLM", default)
    paths = folder_paths.get_folder_paths("LLM")
    return paths[0] if paths else default


def _input_named(message: str, backend: str) -> str:
    """The input a refusal of the expander is about: its messages start with the setting's name
    (``base_url='...': ...``, ``prompt contains ...``)."""
    first = re.match(r"[a-z_]+", message)
    if first and first.group(0) in INPUTS:
        return first.group(0)
    return "base_url" if backend == "openai-compatible" else "prompt"


class SpacetimePromptExpander(SpacetimeNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SpacetimePromptExpander",
            display_name="Prompt Expander (Spacetime)",
            category="Spacetime/text",
            description="Rewrite a short idea into the long, detailed caption video models were trained on: "
                        "offline rules, any OpenAI-compatible server (Ollama, llama.cpp, LM Studio, vLLM, "
                        "hosted APIs) or a local Qwen2.5 model. Same inputs and seed give the same text.",
            inputs=[
                io.String.Input("prompt", multiline=True, default="a red fox running through fresh snow",
                                tooltip="a short idea; the node writes the long caption (shown on the node after a run)"),
                io.Combo.Input("task", options=list(TASKS), default="t2v",
                               tooltip="t2v text only; i2v the image is the first frame; flf2v first and "
                                       "last frame; extend continue a clip (the image is its last frame)"),
                io.Combo.Input("model_family", options=list(FAMILIES), default="wan2.1",
                               tooltip="the video model the caption is written for; 'embedded' writes "
                                       "captions in the tiny built-in model's vocabulary"),
                io.Combo.Input("language", options=list(LANGUAGES), default="en", tooltip="the caption's language"),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="same prompt and seed, same caption; picks what the prompt leaves open"),
                io.Int.Input("max_words", default=100, min=10, max=1000,
                             tooltip="length limit (Chinese: characters); Wan captions are usually 80-100"),
                io.Combo.Input("backend", options=BACKEND_CHOICES, default="rules",
                               tooltip="rules: offline, instant; openai-compatible: an LLM server; local HF: a local Qwen2.5"),
                io.String.Input("base_url", default="http://localhost:11434/v1",
                                tooltip="openai-compatible: the API root, usually ending in /v1 "
                                        "(Ollama :11434, llama.cpp :8080, LM Studio :1234, vLLM :8000)"),
                io.String.Input("model", default="",
                                tooltip="openai-compatible: the server's model name (e.g. qwen2.5:7b). "
                                        "local HF: a repo id or a folder inside models/LLM; empty = "
                                        "Qwen2.5-3B-Instruct (Qwen2.5-VL-3B with images), downloaded "
                                        "into models/LLM"),
                io.String.Input("api_key_env", default="OPENAI_API_KEY",
                                tooltip="the NAME of the environment variable that holds the API key "
                                        "(never the key itself: workflows are shared); empty = no key. "
                                        "Only names ending in _API_KEY or listed in SPACETIME_API_KEY_VARS; "
                                        "the key goes only to localhost or the https hosts in SPACETIME_API_KEY_HOSTS"),
                io.Combo.Input("on_error", options=list(ON_ERROR), default="fallback",
                               tooltip="fallback: warn and use the offline rules; raise: stop the workflow"),
                io.Float.Input("temperature", default=0.7, min=0.0, max=2.0, step=0.05, optional=True,
                               tooltip="LLM backends: higher = more varied captions"),
                io.Image.Input("images", optional=True,
                               tooltip="frames the LLM should look at (i2v: first frame; flf2v: first "
                                       "and last; extend: the clip's last frame)"),
            ],
            outputs=[
                io.String.Output(display_name="expanded"),
                io.String.Output(display_name="original"),
            ],
            # An output node, so it runs (and its text lands in the history as UI "text") even when
            # nothing consumes it yet; ComfyUI caches it by its inputs, so it reruns only when they change.
            is_output_node=True,
        )

    @classmethod
    def execute(cls, prompt, task, model_family, language, seed, max_words, backend, base_url, model,
                api_key_env, on_error, temperature=0.7, images=None) -> io.NodeOutput:
        import comfy.model_management

        from ..model.prompt_expander import Interrupted, PromptExpanderError

        llm = LLMOptions(backend=backend, base_url=base_url or None, model=model or None, api_key_env=api_key_env,
                         temperature=temperature, models_dir=llm_models_dir())
        try:
            # The Cancel button (POST /interrupt) sets ComfyUI's flag; the expander polls it while it
            # waits on a server or a local model writes, and stops within about 0.1 s.
            expanded = expand_prompt(prompt, task=task, seed=seed, model_family=model_family, language=language,
                                     max_words=max_words, images=images, llm=llm, on_error=on_error,
                                     should_stop=comfy.model_management.processing_interrupted)
        except Interrupted:
            raise comfy.model_management.InterruptProcessingException() from None
        except ValueError as e:  # a setting refused: the library's message starts with the input's name
            raise node_error(cls, _input_named(str(e), backend), str(e)) from None
        except PromptExpanderError as e:  # on_error="raise": the server or the local model failed
            raise node_error(cls, "base_url" if backend == "openai-compatible" else "model", str(e)) from None
        shown = [expanded]
        if model_family == "embedded" and backend == "rules":   # say what the tiny model could not take as written
            from ..model.prompt_expander import embedded_notes
            notes = embedded_notes(prompt, seed)
            for note in notes:
                log.warning("Prompt Expander (embedded): %s", note)
            shown += [f"note: {n}" for n in notes]
        return io.NodeOutput(expanded, prompt, ui={"text": shown})


NODES = [SpacetimePromptExpander]
