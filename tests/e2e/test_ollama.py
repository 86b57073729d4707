#!/usr/bin/env python3
"""Real-upstream tests of swapd's Ollama API, driven by the official `ollama` Python client.

swapd in front of real llama-server processes (the tiny GGUF models of gen_models.py), with
the same per-test swapd, config and clean-up as test_e2e.py (whose helpers this reuses).
test_e2e.py's runner includes these tests; this file also runs on its own:

    SWAPD_BIN=... SWAPD_LLAMA_SERVER=... SWAPD_MODELS=... \\
        ~/.cache/swapd/venv/bin/python tests/e2e/test_ollama.py [-v] [TestOllama.test_x ...]

Waiting is a poll against a deadline, never a bare sleep.
"""

from __future__ import annotations

import math
import os
import sys
import time
import unittest
from datetime import datetime, timezone

import ollama

import test_e2e as base
from test_e2e import (
    MODEL_FILES,
    REQUEST_TIMEOUT,
    STREAM_CTX,
    STREAM_TOKENS,
    SlotWitness,
    SwapdTestCase,
    info,
    pids_with,
    upstream_url,
    wait_until,
)


def setUpModule():
    base.setUpModule()


def listed(model: str) -> str:
    return f"{model}:latest"


class TestOllama(SwapdTestCase):
    def setUp(self):
        super().setUp()
        self.ollama = ollama.Client(host=self.swapd.base, timeout=REQUEST_TIMEOUT)
        self.addCleanup(self.ollama.close)

    def test_list_and_show(self):
        models = {m.model: m for m in self.ollama.list().models}
        self.assertEqual(set(models), {listed(m) for m in MODEL_FILES})
        a = models[listed("tiny-a")]
        self.assertEqual(a.size, os.path.getsize(os.path.join(base.MODELS_DIR, "tiny-a.gguf")))
        # Read from the GGUF header: llama architecture, f32 weights.
        self.assertEqual(a.details.family, "llama")
        self.assertEqual(a.details.format, "gguf")
        self.assertEqual(a.details.quantization_level, "F32")
        self.assertTrue(a.details.parameter_size, a.details)
        self.assertIsNotNone(a.modified_at)
        self.assertTrue(a.digest)
        self.assertEqual(self.swapd.running(), {}, "listing starts nothing")

        show = self.ollama.show("tiny-a")
        self.assertEqual(show.details.family, "llama")
        self.assertEqual(show.modelinfo["general.architecture"], "llama")
        self.assertEqual(show.modelinfo["llama.context_length"], 2048)
        self.assertIn("completion", show.capabilities)
        self.assertIn("add_generation_prompt", show.template)
        self.assertRegex(show.parameters, r"num_ctx\s+512")
        self.assertEqual(self.ollama.show("tiny-embed:latest").capabilities, ["embedding"])
        with self.assertRaises(ollama.ResponseError) as caught:
            self.ollama.show("no-such-model")
        self.assertEqual(caught.exception.status_code, 404)

    def test_chat_not_streamed_and_ps(self):
        r = self.ollama.chat(
            model="tiny-a",
            messages=[{"role": "user", "content": "Say something."}],
            options={"num_predict": 8, "temperature": 0},
        )
        self.assertEqual(r.message.role, "assistant")
        self.assertIsInstance(r.message.content, str)
        self.assertTrue(r.message.content)
        self.assertTrue(r.done)
        # The tiny models never sample end-of-sequence: generation stops at num_predict.
        self.assertEqual(r.done_reason, "length")
        self.assertEqual(r.eval_count, 8)
        self.assertGreater(r.prompt_eval_count, 0)
        self.assertGreater(r.eval_duration, 0)
        self.assertGreater(r.prompt_eval_duration, 0)
        self.assertGreaterEqual(r.total_duration, r.eval_duration)
        self.assertGreater(r.load_duration, 0)

        running = {m.model: m for m in self.ollama.ps().models}
        self.assertEqual(set(running), {listed("tiny-a")})
        a = running[listed("tiny-a")]
        self.assertEqual(a.context_length, 512)
        self.assertEqual(a.details.family, "llama")
        # No ttl for tiny-a in the test config: kept loaded, reported far in the future.
        self.assertGreater(a.expires_at, datetime(2200, 1, 1, tzinfo=timezone.utc))
        with self.assertRaises(ollama.ResponseError) as caught:
            self.ollama.chat(model="no-such-model", messages=[{"role": "user", "content": "x"}])
        self.assertEqual(caught.exception.status_code, 404)

    def test_generate(self):
        r = self.ollama.generate(model="tiny-b", prompt="Once upon a time",
                                 options={"num_predict": 6})
        self.assertTrue(r.done)
        self.assertTrue(r.response)
        self.assertEqual(r.eval_count, 6)
        pieces = []
        final = None
        for part in self.ollama.generate(model="tiny-b", prompt="Once", stream=True,
                                         options={"num_predict": 12}):
            if part.done:
                final = part
            else:
                pieces.append(part.response)
        self.assertEqual(final.eval_count, 12)
        self.assertGreater(len(pieces), 1)
        raw = self.ollama.generate(model="tiny-b", prompt="<s>abc", raw=True,
                                   options={"num_predict": 5})
        self.assertTrue(raw.response)
        self.assertEqual(raw.eval_count, 5)

    def test_embed(self):
        r = self.ollama.embed(model="tiny-embed", input=["hello", "world"])
        self.assertEqual(len(r.embeddings), 2)
        for vector in r.embeddings:
            self.assertEqual(len(vector), base.EMBED_DIM)
            self.assertAlmostEqual(math.sqrt(sum(x * x for x in vector)), 1.0, places=5)
        self.assertNotEqual(r.embeddings[0], r.embeddings[1])
        legacy = self.ollama.embeddings(model="tiny-embed", prompt="hello")
        self.assertEqual(len(legacy.embedding), base.EMBED_DIM)

    def test_keep_alive_load_and_unload(self):
        # An empty generate loads the model.
        loaded = self.ollama.generate(model="tiny-a")
        self.assertEqual(loaded.done_reason, "load")
        self.assert_running({"tiny-a"})
        pids = self.swapd.model_pids("tiny-a")
        self.assertEqual(len(pids), 1, pids)
        # keep_alive 0 with an empty prompt unloads it; the llama-server process is gone.
        unloaded = self.ollama.generate(model="tiny-a", keep_alive=0)
        self.assertEqual(unloaded.done_reason, "unload")
        self.assertEqual(self.ollama.ps().models, [])
        self.assertTrue(wait_until(lambda: not self.swapd.model_pids("tiny-a"), 30),
                        "tiny-a's llama-server still runs after the unload")
        # A short keep_alive on a real request: served, then unloaded once idle.
        r = self.ollama.chat(model="tiny-b", messages=[{"role": "user", "content": "hi"}],
                             options={"num_predict": 4}, keep_alive="1s")
        self.assertEqual(r.eval_count, 4)
        self.assertTrue(wait_until(lambda: self.swapd.running() == {}, 30),
                        "tiny-b was not unloaded after its keep_alive")
        self.assertEqual(self.ollama.ps().models, [])
        self.assertTrue(wait_until(lambda: not pids_with(self.swapd.models), 30),
                        "a llama-server still runs after the unload")


class TestOllamaStream(SwapdTestCase):
    """The streamed chat on its own swapd, whose llama-server has room for a long generation
    (TestOllama's other tests check the 512-token context the shared config sets)."""

    LLAMA_CTX = STREAM_CTX

    def setUp(self):
        super().setUp()
        self.ollama = ollama.Client(host=self.swapd.base, timeout=REQUEST_TIMEOUT)
        self.addCleanup(self.ollama.close)

    def test_chat_streamed(self):
        loaded = self.ollama.generate(model="tiny-a")  # an empty generate loads the model
        self.assertEqual(loaded.done_reason, "load")
        witness = SlotWitness(upstream_url(self.swapd.get_json("/running"), "tiny-a"))
        arrivals = []
        final = None
        for part in self.ollama.chat(
            model="tiny-a",
            messages=[{"role": "user", "content": "Tell me a story."}],
            options={"num_predict": STREAM_TOKENS},
            stream=True,
        ):
            if part.done:
                final = part
            elif part.message.content:
                if not arrivals:
                    witness.observe()
                arrivals.append((time.monotonic(), part.message.content))
        self.assertIsNotNone(final, "the stream ended with a done line")
        self.assertEqual(final.done_reason, "length")
        self.assertEqual(final.eval_count, STREAM_TOKENS)
        # llama-server sends one event per token; swapd makes each one line.
        self.assertGreaterEqual(len(arrivals), 100, f"{len(arrivals)} lines")
        info(f"ollama chat stream: {len(arrivals)} lines over "
             f"{1000 * (arrivals[-1][0] - arrivals[0][0]):.1f} ms; llama-server generated for "
             f"{final.eval_duration / 1e6:.1f} ms (informative: arrival times depend on the load)")
        # The first line reached the client while llama-server was still generating.
        witness.check(self, "ollama chat stream")


def main() -> int:
    argv = [a for a in sys.argv[1:] if a not in ("-v", "--verbose")]
    loader = unittest.TestLoader()
    module = sys.modules[__name__]
    suite = loader.loadTestsFromNames(argv, module) if argv else loader.loadTestsFromModule(module)
    result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(suite)
    failed = len({id(t) for t, _ in result.failures + result.errors})
    skipped = len(result.skipped)
    passed = max(result.testsRun - failed - skipped, 0)
    print(f"e2e-ollama: {passed} passed, {failed} failed, {skipped} skipped")
    return 0 if failed == 0 and result.testsRun > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
