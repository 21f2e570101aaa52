"""A classifier behind the server: what it serves under which name, and the worker thread that runs it.

`ServedClassifier` is the classifier's counterpart of served.py's `Served` (names, model cards, the
default model), so /v1/models, /health and the request log treat both alike. `ClassifierWorker` is
its counterpart of the engine: one thread runs every forward pass, off the event loop, and the
requests that arrive while a pass runs are classified together in the next one (a small batching
queue), so concurrent requests share forward passes instead of queueing one behind another.
Each request keeps its own threshold: the probabilities do not depend on it, only the labels read
from them (tests/classify/test_predict_and_serve.py::
test_concurrent_requests_share_forward_passes_are_metered_and_logged).
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field

from tuneforge.models.classifier import Classifier, classifier_dir, load_classifier
from tuneforge.models.image_classifier import ImageClassifier, image_classifier_dir, load_image_classifier
from tuneforge.serve.engine import EngineClosed
from tuneforge.serve.options import MAX_TEXTS
from tuneforge.serve.protocol import ModelCard, now
from tuneforge.serve.threads import take as take_threads

log = logging.getLogger("tuneforge.serve")


@dataclass
class ServedClassifier:
    classifier: Classifier | ImageClassifier  # either labels what it is given: texts, or PIL images
    name: str  # its id in the API
    root: str  # where it was loaded from
    created: int = field(default_factory=now)
    warnings: list[str] = field(default_factory=list)
    version: str | None = None  # a registry version; classifiers are served from run directories only

    @property
    def names(self) -> dict[str, str]:
        return {self.name: self.root}

    @property
    def default(self) -> str:
        return self.name

    @property
    def images(self) -> bool:
        """An image classifier: /v1/classify takes `images` (serve/images.py), not texts."""
        return isinstance(self.classifier, ImageClassifier)

    def cards(self) -> list[ModelCard]:
        return [ModelCard(id=self.name, created=self.created, root=self.root)]

    def describe(self) -> str:
        labels = self.classifier.labels
        kind = "multi-label" if labels.multi_label else "single-label"
        what = "image classifier" if self.images else "classifier"
        return f"{what} {self.name}: {len(labels.names)} classes, {kind}: {', '.join(labels.names)}"


def load_served_classifier(reference: str, name: str | None = None) -> ServedClassifier:
    """A text classifier, or an image classifier (task: image_classify), as the saved model says."""
    if image_classifier_dir(reference) is not None:
        classifier, root = load_image_classifier(reference), image_classifier_dir(reference)
    else:
        classifier, root = load_classifier(reference), classifier_dir(reference)
    return ServedClassifier(classifier, name or reference.rstrip("/") or reference, str(root))


@dataclass
class Job:
    texts: list  # texts, or an image classifier's PIL images
    threshold: float | None
    future: Future  # list[Prediction], or the forward pass's exception


@dataclass
class ClassifierStats:
    """Counters the worker keeps (its thread alone writes them); /metrics reads them at scrape time."""

    requests: int = 0  # requests classified
    texts: int = 0  # texts classified
    rounds: int = 0  # rounds of forward passes, each over every request waiting when it began
    failures: int = 0  # rounds that raised; their requests got errors


class Stop:
    """The queue item that ends the worker, after every request queued before it."""


class ClassifierWorker:
    """Runs the classifier in one thread; `submit` returns a future of a request's predictions.

    Same lifecycle as engine.Engine (start, submit, shutdown draining what is queued, alive,
    queue_depth, running), so the app starts, drains and reports either one alike.
    """

    def __init__(self, classifier: Classifier, batch_size: int, max_texts: int = MAX_TEXTS, threads: int | None = None):
        self.classifier, self.batch_size, self.max_texts = classifier, batch_size, max_texts
        self.threads = threads  # torch threads of the worker's thread (serve/threads.py); None: as they are
        self.stats = ClassifierStats()
        self.running = 0  # texts in the round now running
        self._queue: queue.Queue = queue.Queue()  # bounded by the server's admission limit (max_concurrent)
        self._closing = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="tuneforge-classifier", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, texts: list[str], threshold: float | None = None) -> Future:
        future: Future = Future()
        with self._lock:  # never behind the stop request: a request taken is a request answered
            if self._closing:
                raise EngineClosed("the classifier is shutting down")
            self._queue.put(Job(texts, threshold, future))
        return future

    def shutdown(self, timeout: float | None = None) -> bool:
        """Classify what is queued, then stop; True when the thread ended within `timeout`."""
        with self._lock:
            self._closing = True
            self._queue.put(Stop())
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._closing

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def _run(self) -> None:
        take_threads(self.threads)
        stopping = False
        while not stopping:
            jobs, size = [], 0
            item = self._queue.get()
            while True:
                if isinstance(item, Stop):
                    stopping = True
                    break
                jobs.append(item)
                size += len(item.texts)
                if size >= self.max_texts:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            self._round([job for job in jobs if job.future.set_running_or_notify_cancel()])  # skips timed-out ones

    def _round(self, jobs: list[Job]) -> None:
        """One round: every waiting request's texts together, then each request's labels at its own threshold."""
        if not jobs:
            return
        texts = [text for job in jobs for text in job.texts]
        self.running = len(texts)
        try:
            probabilities = self._forward(texts)
        except Exception as exc:  # a bug or out of memory: fail these requests, keep serving
            self.stats.failures += 1
            log.exception("classifier: a forward pass failed: %s", exc)
            for job in jobs:
                job.future.set_exception(exc)
            return
        finally:
            self.running = 0
        self.stats.requests += len(jobs)  # before any answer leaves: a client that got one sees it counted
        self.stats.texts += len(texts)
        self.stats.rounds += 1
        start = 0
        for job in jobs:
            rows = probabilities[start : start + len(job.texts)]
            start += len(job.texts)
            try:
                job.future.set_result(self.classifier.predictions(rows, job.threshold))
            except Exception as exc:
                log.exception("classifier: reading labels failed: %s", exc)
                job.future.set_exception(exc)

    def _forward(self, texts: list[str]):
        """Every text's class probabilities, `batch_size` texts per forward pass (tests hold it to gather requests)."""
        return self.classifier.probabilities(texts, self.batch_size)
