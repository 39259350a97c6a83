# %% [markdown]
# # Your folder in five steps
#
# Train, evaluate, explain, find similar cases and serve, from a folder of images with one subfolder per
# class: the layout most users start from. This page is a notebook stored as a script (jupytext); the
# documentation build runs it, so every output below is what the code printed. For research use only.
#
# The images here are generated (lesion-like blobs, two classes), small so that the whole notebook runs in
# about a minute on two CPU cores. With your own images, point `root` at your folder and leave out step 0.

# %%
import logging
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

work = Path(tempfile.mkdtemp(prefix="attnscope-tutorial-"))
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)  # Lightning's start-up notes

# %% [markdown]
# ## 0. A folder of images
#
# `benign/` and `malignant/`, 120 images each: a malignant lesion tends to be darker and more irregular
# (the two overlap, as real lesions do). Any folder
# whose subfolders are the classes is read the same way (PNG, JPEG, TIFF, BMP, DICOM).

# %%
rng = np.random.default_rng(0)
root = work / "lesions"
yy, xx = np.mgrid[:48, :48]
for label, darkness, irregularity in (("benign", (0.2, 0.6), (0.0, 0.2)), ("malignant", (0.4, 0.8), (0.1, 0.35))):
    (root / label).mkdir(parents=True)
    for i in range(120):
        cy, cx = rng.uniform(14, 34, size=2)
        angle = np.arctan2(yy - cy, xx - cx)
        radius = rng.uniform(6, 11) * (1 + rng.uniform(*irregularity) * np.sin(5 * angle + rng.uniform(0, 6)))
        inside = np.hypot(yy - cy, xx - cx) < radius
        skin = np.array([205, 160, 135]) + rng.normal(0, 10, (48, 48, 3))
        pixels = np.where(inside[..., None], skin * (1 - rng.uniform(*darkness)), skin)
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(root / label / f"{label}-{i:03d}.png")
print(sorted(p.name for p in root.iterdir()), sum(1 for _ in root.rglob("*.png")), "images")

# %% [markdown]
# ## 1. Train
#
# `load_config` takes a shipped recipe (here `demo`, a small attention VGG) and `section.key=value`
# settings, the same as `attnscope train --config demo --set ...`. The folder source splits the images into
# training, validation and test (70/15/15, seeded); the learning rate 1e-3 suits a small folder.

# %%
from attnscope import Run, load_config, train

run_dir = work / "run"
config = load_config(
    "demo",
    [
        f"run_dir={run_dir}",
        "data.source=folder",
        f"data.source_options={{root: {root}}}",
        "data.image_size=32",
        "data.batch_size=32",
        "trainer.epochs=6",
        "optim.lr=0.001",
        "supervision.weights={}",
        "trainer.progress=false",
        "data.progress=false",
    ],
)
result = train(config)
best = result.best
print(f"best epoch {best['epoch']}: validation AUC {best['value']:.3f}")

# %% [markdown]
# ## 2. Evaluate on the held-out test split
#
# Probabilities are calibrated on validation (temperature scaling) and the operating threshold is chosen
# there too, so the test figures are honest. Each figure carries its 95% interval (bootstrap).

# %%
from attnscope.engine import EvaluateOptions, evaluate

with Run.open(run_dir, progress=False) as run:
    evaluation = evaluate(run, EvaluateOptions(split="test"))
metrics = evaluation.metrics
print(
    f"test AUC {metrics['auc']:.3f}, sensitivity {metrics['sensitivity_at_threshold']:.2f}, "
    f"specificity {metrics['specificity_at_threshold']:.2f}"
)

# %% [markdown]
# ## 3. Explain: where did the model look, and can the maps be trusted?
#
# The attention maps and a Grad-CAM are drawn over test images and scored (this folder has no lesion masks, so
# the scores are faithfulness ones: how fast the class score falls as the map's pixels are deleted); the sanity checks
# (Adebayo et al. 2018) say whether a map depends on the weights and on the image at all.

# %%
from attnscope.explain import ExplainOptions, explain

with Run.open(run_dir, progress=False) as run:
    explanation = explain(run, ExplainOptions(methods=["attention", "gradcam"], count=8, sanity=4))
for method, scores in explanation.summary.items():  # without masks: faithfulness (deletion, insertion)
    print(f"{method:>10}:", {name: round(value, 3) for name, value in scores.items()})
for method, checks in explanation.sanity.methods.items():
    print(f"{method:>10}: {checks.flag() or 'passes both sanity checks'}")
print(len(explanation.overlays), "overlays in", explanation.out)

# %% [markdown]
# ## 4. Find similar cases
#
# The training images are indexed by the model's embedding; an image's neighbours are the already
# diagnosed cases it resembles. The query below is itself in the index: it is not returned as its own
# neighbour (nor would its patient's other images be, where the data name patients), since neither is a
# second opinion; `SearchOptions(include_same=True)` keeps them.

# %%
from attnscope.retrieval import IndexOptions, SearchOptions, build_index, result_rows, search_images

with Run.open(run_dir, progress=False) as run:
    index = build_index(run, IndexOptions(out=str(work / "index")))
query = next((root / "malignant").iterdir())
similar, found = search_images(work / "index", [query], SearchOptions(k=3), progress=False)
for row in result_rows(similar, found):
    print(row["rank"], row["label"], f"{row['similarity']:.3f}", Path(row["path"]).name)
print(index.count, "images indexed")

# %% [markdown]
# ## 5. Serve
#
# `attnscope serve RUN` starts a web page and a JSON API. Here the same app answers in the notebook through
# FastAPI's test client: one upload, calibrated probabilities back.

# %%
from fastapi.testclient import TestClient

from attnscope.serve import ModelService
from attnscope.serve.app import create_app

with (
    Run.open(run_dir, progress=False) as run,
    TestClient(create_app(ModelService(run)), base_url="http://127.0.0.1") as client,
):
    answer = client.post("/v1/predict", files=[("images", (query.name, query.read_bytes(), "image/png"))]).json()
print("threshold (chosen on validation):", round(answer["threshold"], 2))
for finding in answer["results"]:
    probabilities = {name: round(value, 2) for name, value in finding["probabilities"].items()}
    print(finding["name"], "->", finding["predicted"], probabilities)
