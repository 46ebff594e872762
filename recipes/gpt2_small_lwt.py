"""GPT-2 small (124,439,808 parameters, tied embeddings) trained through one latent per transformer block (the
``blocks`` grouping: the embeddings, each of the 12 blocks, the final norm; 4,096 latent values in all) with the
default ``sparse`` mapping operator, on next-byte prediction.

    mapscale inspect recipes/gpt2_small_lwt.py --world-size 64     # the sharding plan and memory per rank
    mapscale train recipes/gpt2_small_lwt.py optim.max_steps=5     # a few steps on this machine's CPU
    mapscale train recipes/gpt2_small_lwt.py data.path=corpus.txt  # your own text
    mapscale train recipes/gpt2_small_lwt.py target.name=hf:gpt2 data.tokenizer=bpe:8192 \
        'target.args={"n_layer": 4, "n_embd": 256, "n_head": 4, "vocab_size": 8192}'   # Hugging Face's GPT-2

A dense fp32 mapping for this layout would hold 188.9 GiB (949 GiB under SLVT 2,048); the sparse operator holds
nothing per parameter, so the fixed state is the init weights ``theta_0`` the run starts from (``offset="init"``):
0.464 GiB in all (`mapscale inspect`), 0.058 GiB on the heaviest of 8 ranks, 0.007 GiB of 64; with
``mapping.offset=mean`` (pure generation) it is 0.000 GiB. The learning rate is the mapping's default (0.3,
relative): on a 4-layer x 256 GPT of this kind it gave validation perplexity 16.7 against 53.5 at 0.01 and
15.4 at 1 after 100 steps (``bench/results/defaults.md``). The default data is this repository's README.md read as bytes
(vocabulary 256 inside GPT-2's 50,257: no tokenizer to download); the last 10% of the file is the test split.
Not a paper experiment: the paper has no transformer.
"""

from pathlib import Path

from mapscale.recipe import DataSection, MappingMethod, OptimSection, OutputSection, Recipe, TargetSection


class Gpt2SmallLwt(Recipe):
    task = "language_modeling"
    target = TargetSection(name="gpt2")
    mapping = MappingMethod(grouping="blocks", budget=4096)  # embeddings, h.0 ... h.11, final (ln_f)
    data = DataSection(name="text", path=Path(__file__).resolve().parents[1] / "README.md", window=128, test_size=0.1)
    optim = OptimSection(epochs=1, batch_size=8)
    output = OutputSection(eval_every=10)
