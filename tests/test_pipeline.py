"""Trains a small tokenizer on a real slice of The Complete Journey, exports it, and holds ONNX Runtime
to PyTorch on every window of that slice."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from u2qt.model.manifest import Manifest
from u2qt.model.runtime import TokenizerRuntime
from u2qt.training.corpus import build_corpus
from u2qt.training.text_encoder import load_pooled_model
from u2qt.training.train import load_checkpoint, train


def test_training_report_shows_a_working_tokenizer(trained_dir):
    out, cfg, report = trained_dir
    assert set(report["windows_by_source"]) == {"purchases", "promotions", "visits"}
    for level in report["levels"]:
        assert level["used_fraction"] > 0.3, level
    for name, rec in report["reconstruction"].items():
        assert rec["train_cosine"] > 0.3, (name, rec)
    col = report["collisions"]
    assert set(col["by_source"]) == {"purchases", "promotions", "visits"}
    assert col["distinct_inputs"] <= report["windows"]
    assert col["by_source"]["purchases"]["rate"] < 0.5, col
    assert (out / "utilization.png").stat().st_size > 10_000
    assert json.loads((out / "report.json").read_text())["windows"] == report["windows"]


def test_onnx_runtime_matches_pytorch_on_real_windows(trained_dir, cj_events):
    out, cfg, _ = trained_dir
    events, sources = cj_events
    corpus = build_corpus(events, sources, progress=False)
    rt = TokenizerRuntime(out, providers="cpu")
    ck = load_checkpoint(out)
    w = corpus.windows
    text_rows = (w["text"] != "").to_numpy()
    texts = w.loc[text_rows, "text"].tolist()

    # the text encoder: the PyTorch model on the same token ids vs the exported ONNX file
    pooled, _ = load_pooled_model(cfg.encoder)
    chunked = rt.text.tokenizer.encode(texts)
    torch_emb = np.zeros((len(texts), rt.manifest.encoder.dim), dtype=np.float32)
    with torch.no_grad():
        for i, chunks in enumerate(chunked):  # a long window: its chunks' mean weighted by length, re-normalized
            input_ids, mask = rt.text.tokenizer.pad(chunks)
            e = pooled(torch.from_numpy(input_ids), torch.from_numpy(mask)).numpy()
            v = (e * mask.sum(1, keepdims=True)).sum(0)
            torch_emb[i] = v / np.linalg.norm(v)
    ort_emb = rt.text.embed(texts)
    assert np.abs(ort_emb - torch_emb).max() < 1e-4

    # the whole tokenizer: PyTorch from PyTorch embeddings vs ONNX Runtime from ONNX embeddings
    source = w["source_index"].to_numpy()
    emb = np.zeros((len(w), rt.manifest.encoder.dim), dtype=np.float32)
    emb[text_rows] = torch_emb
    feats = {k: torch.from_numpy(v) for k, v in corpus.features.items()}
    with torch.no_grad():
        torch_codes, z = (x.numpy() for x in ck.model.encode(torch.from_numpy(emb), torch.from_numpy(source), feats))
    text_emb = np.zeros_like(emb)
    text_emb[text_rows] = ort_emb
    h = rt.embed_windows(corpus.rendered(), text_embeddings=text_emb)
    ort_codes, latent = rt.quantize(h, source)
    # the service's own path from rendered text (its CPU length runs) gives the same codes
    assert (rt.encode_windows(corpus.rendered()) == ort_codes).all(1).mean() >= 0.999
    assert (ort_codes == torch_codes).all(1).mean() >= 0.999
    assert np.abs(latent - z).max() < 1e-4


def test_training_and_the_service_render_every_window_of_300_households_alike(trained_dir):
    """Training renders a window with build_corpus; the service from the events its store returns, sorted by
    (ts, event_id). Every window must come out the same, or the model was trained on inputs the service never
    produces, as some did when a basket's items came in log order and amounts were summed as they came
    (benchmarks/render_parity.py counts every household)."""
    from collections import defaultdict

    from u2qt.model.sources import window_index
    from u2qt.service.ingest import EventTokenizer
    from u2qt.service.metrics import ServiceMetrics
    from u2qt.service.schemas import EventIn
    from u2qt.training.completejourney import load_events, sources_config
    from u2qt.training.events import keep_users, normalize_events, to_service_events

    sources = sources_config()
    events = keep_users(normalize_events(load_events(), sources), 300)
    manifest = Manifest.load(trained_dir[0])
    service = EventTokenizer(manifest, None, None, ServiceMetrics())  # renders windows; no store, no queue
    stored = defaultdict(list)
    for e in to_service_events(events, sources):
        key = (e["user_id"], e["source"], int(window_index(e["ts"], sources.period_s)))
        stored[key].append(service._stored(EventIn(**e)) | {"event_id": e["event_id"]})
    corpus = build_corpus(events, sources, progress=False)
    w = corpus.windows
    assert len(w) == len(stored)
    for i, (user, source, start) in enumerate(zip(w["user_id"], w["source"], w["window_start"], strict=True)):
        key = (user, source, int(window_index(float(start), sources.period_s)))
        job = service._job(source, sorted(stored[key], key=lambda e: (e["ts"], e["event_id"])))
        if job.text is not None:
            assert job.text == w["text"][i], key
        else:
            assert job.features.tobytes() == corpus.features[source][i].tobytes(), key


def test_manifest_is_the_contract(trained_dir):
    out, cfg, _ = trained_dir
    m = Manifest.load(out)
    assert [s.name for s in m.sources.sources] == ["purchases", "promotions", "visits"]
    assert m.sources.window == "7d"
    assert m.quantizer.shared_levels == 2 and m.quantizer.specific_levels == 2
    assert m.vocabulary.size == m.token_vocabulary().size
    assert m.tabular["visits"].feature_names[0] == "log_events"
    assert all((out / f).is_file() for f in m.files)
    (out / m.quantizer.file).write_bytes((out / m.quantizer.file).read_bytes() + b"x")
    try:
        Manifest.load(out)
        raise AssertionError("a tampered file must fail the checksum")
    except ValueError as e:
        assert "checksum" in str(e)
    finally:
        from u2qt.training.export import export_artifacts

        export_artifacts(out)


def test_model_version_does_not_depend_on_where_the_code_is_checked_out(trained_dir, tmp_path):
    """Exported from another checkout, the same checkpoint gets the same files and model_version: a re-export
    elsewhere must not key histories apart."""
    out, _, _ = trained_dir
    repo = Path(__file__).resolve().parents[1]
    elsewhere = tmp_path / "another-checkout"
    for package in ("model", "service", "training"):  # laid out as installed: u2qt.<package>
        shutil.copytree(repo / package, elsewhere / "u2qt" / package, ignore=shutil.ignore_patterns("__pycache__"))
    dest = tmp_path / "exported-elsewhere"
    code = (
        "import sys; sys.path.insert(0, '.'); from u2qt.training import export; "
        "assert export.__file__.startswith(sys.argv[3]), export.__file__; "
        "print(export.export_artifacts(*sys.argv[1:3]).model_version)"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(out), str(dest), str(elsewhere)],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        check=True,
    )
    here = Manifest.load(out)
    assert run.stdout.split()[-1] == here.model_version
    assert Manifest.load(dest).files == here.files
    for f in here.files:
        assert str(repo).encode() not in (out / f).read_bytes(), f"{f} names this checkout's path"


def test_the_decoded_reader_counts_windows_where_users_have_many(trained_dir):
    """The kind=tokens reader's soft counts are chosen from the corpus as the capacity is (256 features per source
    where the median user has 8 or more active windows, none where fewer), a set value is kept, and export writes
    them standardized by the training windows' decoded tokens, with the width the manifest promises."""
    from safetensors.numpy import load_file

    from u2qt.model.decoded import CODEBOOKS_FILE, codeword_sums, load_codebooks, load_soft_counts
    from u2qt.training.config import ReaderConfig

    assert ReaderConfig().for_corpus(1.0).soft_counts == 0 and ReaderConfig().for_corpus(29.0).soft_counts == 256
    assert ReaderConfig(soft_counts=16).for_corpus(1.0).soft_counts == 16
    # the decoded event texts likewise: 1,000 where users have many windows, none where few, a set value kept
    assert ReaderConfig().for_corpus(1.0).texts == 0 and ReaderConfig().for_corpus(29.0).texts == 1000
    assert ReaderConfig(texts=50).for_corpus(1.0).texts == 50 and ReaderConfig(texts=0).for_corpus(29.0).texts == 0

    out, cfg, report = trained_dir  # 40 households of The Complete Journey: weekly shoppers
    assert cfg.reader.soft_counts is None and report["median_active_windows_per_user"] >= 8
    assert load_checkpoint(out).train_config.reader.soft_counts == 256
    m = Manifest.load(out)
    q = m.quantizer
    assert m.decoded.soft_counts == 256
    assert m.decoded.dim == len(m.sources.sources) * (q.code_dim + 3 + 256) + len(m.decoded.texts)
    counts = load_soft_counts(out)
    assert counts.projection.shape == (q.code_dim, 256)
    w = np.load(out / "windows.npz")
    fit = ~w["holdout"]
    codebooks = load_codebooks(out, q.shared_levels + q.specific_levels)
    z = codeword_sums(codebooks, q.shared_levels, q.codebook_size, w["codes"][fit], w["source_index"][fit])
    np.testing.assert_allclose(counts.mean, z.mean(0), atol=1e-5)
    np.testing.assert_allclose(counts.scale, z.std(0), rtol=1e-4)
    assert w["holdout"].any(), "the held-out users' windows must be there to be left out"
    assert set(load_file(str(out / CODEBOOKS_FILE))) >= {"soft_counts_projection", "level_0"}


def test_export_decodes_tokens_to_the_most_frequent_event_texts_of_the_training_windows(trained_dir):
    """Export fits the kind=tokens reader's event-text decoder to the training windows' tokens, the held-out users
    left out: the manifest lists the training events' most frequent texts in the decoder's column order, the
    tabular source is left out, and on the held-out users' windows it predicts their counts of each text better
    than the training windows' mean count does."""
    from u2qt.model.decoded import load_token_texts
    from u2qt.training.event_texts import WINDOW_TEXTS_FILE, load_window_texts

    out, cfg, _ = trained_dir
    m = Manifest.load(out)
    counts, texts = load_window_texts(out / WINDOW_TEXTS_FILE)
    assert m.decoded.texts == texts and len(texts) > 100
    decoder = load_token_texts(out)
    vocab = m.token_vocabulary()
    assert decoder.table.shape == (vocab.size, len(texts))
    names = [x.name for x in m.sources.sources]
    assert decoder.sources.tolist() == [float(x.kind == "text") for x in m.sources.sources], names
    w = np.load(out / "windows.npz")
    held = np.flatnonzero(w["holdout"] & (counts.getnnz(axis=1) > 0))
    assert len(held) > 20, "the held-out users' text windows must be there to be predicted"
    predicted = decoder(vocab.ids(w["source_index"][held], w["codes"][held]), w["source_index"][held])
    actual = counts[held].toarray()
    mean = counts[np.flatnonzero(~w["holdout"])].toarray().mean(0)
    assert ((predicted - actual) ** 2).sum() < ((mean - actual) ** 2).sum()


def test_unset_codebook_capacity_is_chosen_from_how_many_windows_users_have(trained_dir):
    """Levels, codebook size and latent width left unset are filled in from the corpus (4 shared + 4 specific levels
    of 1,024 and a latent of 128 where users have few windows, 2 + 2 of 256 and 64 where they have many), those set
    are kept, and the checkpoint holds what was chosen, so export, eval and serving never see an unset size."""
    from u2qt.training.config import QuantizerConfig

    few, many = QuantizerConfig().with_capacity_for(1.0), QuantizerConfig().with_capacity_for(29.0)
    assert (few.shared_levels, few.specific_levels, few.codebook_size, few.code_dim) == (4, 4, 1024, 128)
    assert (many.shared_levels, many.specific_levels, many.codebook_size, many.code_dim) == (2, 2, 256, 64)
    kept = QuantizerConfig(specific_levels=1, codebook_size=64, code_dim=16).with_capacity_for(1.0)
    assert (kept.shared_levels, kept.specific_levels, kept.codebook_size, kept.code_dim) == (4, 1, 64, 16)

    out, cfg, report = trained_dir  # 40 households of The Complete Journey: weekly shoppers
    assert cfg.quantizer.shared_levels is None and report["median_active_windows_per_user"] >= 8
    q = load_checkpoint(out).train_config.quantizer
    assert (q.shared_levels, q.specific_levels, q.codebook_size) == (2, 2, 64)
    assert report["config"]["quantizer"]["shared_levels"] == 2


def test_same_data_config_and_seed_give_the_same_codes(trained_dir, cj_events, tmp_path):
    out, cfg, _ = trained_dir
    events, _ = cj_events
    again = tmp_path / "again"
    again.mkdir()
    shutil.copytree(out / "encoder", again / "encoder")  # same encoder file; skips a re-export
    shutil.copytree(out / "cache", again / "cache")
    train(cfg, events, again, progress=False)
    assert np.array_equal(np.load(out / "windows.npz")["codes"], np.load(again / "windows.npz")["codes"])


def test_inspect_prints_figures_and_saves_a_plot(trained_dir, tmp_path, capsys):
    from u2qt.service.cli import main

    out, _, _ = trained_dir
    png = tmp_path / "usage.png"
    assert main(["inspect", str(out), "--plot", str(png)]) == 0
    printed = capsys.readouterr().out
    assert "L1     shared" in printed and "collision rate" in printed and "reconstruction cosine" in printed
    # what the window period's guidance (docs/training.md) reads
    per_user = next(line for line in printed.splitlines() if line.startswith("windows per user (median, by source):"))
    assert "purchases " in per_user and "visits " in per_user
    assert "codebooks: 2 shared + 2 specific levels of 64 codes, a latent of 32 floats (median " in printed
    assert "kind=tokens reader: the mean and activity per source, and soft counts of 256 features" in printed
    assert "; and the tokens decoded to the " in printed and " most frequent event texts" in printed
    assert png.stat().st_size > 10_000
