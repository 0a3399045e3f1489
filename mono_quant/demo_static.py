"""Static quantization of MiniLM-L6: INT8 weights and calibrated INT8 inputs, compared with fp32.

    python -m mono_quant.demo_static                      # observer "mse"
    python -m mono_quant.demo_static --observer minmax

Calibration runs on ``CALIBRATION_SENTENCES`` (tokenized in batches, passed as dicts of
keyword arguments, as Hugging Face models take them); the embeddings are compared on
``mono_quant.demo.SENTENCES``, which calibration never sees.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import torch

from .demo import SENTENCES, cosine_to_reference, embed, load_minilm
from .static import static_quantize

# Everyday sentences on other topics than the evaluation set (mono_quant.demo.SENTENCES).
CALIBRATION_SENTENCES = (
    "The museum opens at nine and closes early on Sundays.",
    "Researchers trained the network on millions of labelled images.",
    "He poured a cup of coffee and read the morning paper.",
    "The river flooded the valley after a week of heavy rain.",
    "Stock markets fell sharply after the announcement.",
    "My grandmother grows tomatoes and basil in her garden.",
    "The team scored twice in the final ten minutes of the match.",
    "Please remember to lock the door when you leave the office.",
    "Electric cars are becoming cheaper every year.",
    "The orchestra rehearsed the symphony for three weeks.",
    "A storm knocked out power across the northern suburbs.",
    "She learned to program in Python during the summer break.",
    "The recipe calls for two eggs, flour, sugar and butter.",
    "Astronomers discovered a planet orbiting a distant star.",
    "The train to Berlin leaves from platform seven.",
    "Children played football in the park until sunset.",
    "The company reported record profits in the third quarter.",
    "Our neighbours adopted a small grey kitten last week.",
    "The doctor recommended more sleep and less caffeine.",
    "Mountains covered in snow rose above the quiet village.",
    "The compiler turns source code into machine instructions.",
    "Tourists crowded the narrow streets of the old town.",
    "He repaired the bicycle with a wrench and some oil.",
    "The library added thousands of new books to its collection.",
    "Heavy traffic delayed the bus by almost an hour.",
    "The chef seasoned the soup with salt, pepper and thyme.",
    "Scientists measured the temperature of the ocean floor.",
    "The concert was cancelled because the singer was ill.",
    "A new bridge will connect the island to the mainland.",
    "She painted the kitchen walls a pale shade of yellow.",
    "Vaccines train the immune system to recognise viruses.",
    "The hikers followed the trail along the rocky coast.",
    "The judge postponed the trial until next month.",
    "Bees collect nectar from flowers to make honey.",
    "The software update fixed several security problems.",
    "He wrote a letter to his old friend from school.",
    "Prices at the supermarket have risen since last spring.",
    "The ship sailed into the harbour at dawn.",
    "Students prepared for their final exams in the library.",
    "The wind turbine produces electricity for two hundred homes.",
    "We watched an old film and ate popcorn on the sofa.",
    "The government announced new rules for online privacy.",
    "A robot vacuum cleans the floor while we are at work.",
    "The baker opens the shop before the sun comes up.",
    "Rainforests are home to countless species of insects.",
    "The pilot announced that we would land in twenty minutes.",
    "My phone battery died in the middle of the call.",
    "The painting sold at auction for a surprising price.",
)


def calibration_batches(tokenizer, sentences: Sequence[str] = CALIBRATION_SENTENCES,
                        batch_size: int = 8) -> list[dict[str, torch.Tensor]]:
    """Tokenized batches of ``sentences``, each a dict of keyword arguments for the model.

    >>> batches = calibration_batches(tokenizer)
    >>> sorted(batches[0])
    ['attention_mask', 'input_ids', 'token_type_ids']
    """
    return [
        dict(tokenizer(list(sentences[i:i + batch_size]), padding=True, truncation=True, return_tensors="pt"))
        for i in range(0, len(sentences), batch_size)
    ]


def static_minilm_report(observer: str = "mse", num_samples: int = 40, **options: Any) -> dict[str, Any]:
    """Statically quantize MiniLM-L6 and measure its sentence embeddings against fp32.

    Calibrates on ``num_samples`` of the 48 calibration sentences (the next batch is held back
    for the per-layer output SQNR), then embeds ``mono_quant.demo.SENTENCES`` with both models.
    Returns ``{"observer", "num_samples", "cos_mean", "cos_min", "seconds", "model", "info"}``:
    the quantized model, its ``QuantizationInfo`` and the time static_quantize took.
    ``options`` go to ``static_quantize`` (e.g. ``modules_to_not_convert``).

    >>> row = static_minilm_report()
    >>> row["cos_mean"] >= 0.99
    True
    """
    model, tokenizer = load_minilm()
    reference = embed(model, tokenizer, SENTENCES)
    start = time.perf_counter()
    q_model, info = static_quantize(model, calibration_batches(tokenizer), observer=observer,
                                    num_samples=num_samples, progress=False, **options)
    seconds = time.perf_counter() - start
    cos_mean, cos_min = cosine_to_reference(reference, embed(q_model, tokenizer, SENTENCES))
    return {"observer": observer, "num_samples": num_samples, "cos_mean": cos_mean, "cos_min": cos_min,
            "seconds": seconds, "model": q_model, "info": info}


def main(argv: Sequence[str] | None = None) -> int:
    """Print the per-layer report and the embedding cosine of a static INT8 MiniLM-L6."""
    parser = argparse.ArgumentParser(prog="python -m mono_quant.demo_static", description=__doc__.split("\n\n")[0])
    parser.add_argument("--observer", default="mse", help="observer name (default: mse)")
    parser.add_argument("--num-samples", type=int, default=40, help="calibration sentences (default: 40)")
    args = parser.parse_args(argv)
    row = static_minilm_report(args.observer, args.num_samples)
    print(row["info"])
    print(f"\nstatic int8 ({row['observer']}, {row['num_samples']} calibration sentences): embedding "
          f"cosine vs fp32 on {len(SENTENCES)} sentences: mean {row['cos_mean']:.5f}, min {row['cos_min']:.5f}; "
          f"static_quantize took {row['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
