"""The ``retrieval`` section: which FAISS index, how it is sharded, what each shard reserves."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from unime_ray.config import StrictModel

IndexKind = Literal["flat", "ivf", "ivfpq", "hnsw"]


class RetrievalConfig(StrictModel):
    top_k: int = Field(50, ge=1, description="candidates per query from its pool, positive left out")
    pool_by: Literal["dataset"] | None = Field(
        None, description="None: every query searches the whole corpus (the paper's global pool); dataset: only "
                          "the targets of its own dataset (one index per dataset, built and searched in turn)")
    index: IndexKind = Field("flat", description="flat is exact inner product; ivf, ivfpq (compressed), hnsw approximate")
    nlist: int = Field(1024, ge=1, description="ivf, ivfpq: inverted lists (fewer when a shard has few targets)")
    nprobe: int = Field(32, ge=1, description="ivf, ivfpq: lists searched")
    pq_m: int = Field(16, ge=1, description="ivfpq: sub-quantizers per vector; must divide the dimension")
    pq_nbits: int = Field(8, ge=1, le=16, description="ivfpq: bits per sub-quantizer code")
    hnsw_m: int = Field(32, ge=2, description="hnsw: graph degree")
    ef_search: int = Field(128, ge=1, description="hnsw: search breadth")
    train_size: int = Field(100_000, ge=1, description="ivf, ivfpq: vectors a shard trains its quantizer on")
    query_chunk_size: int = Field(1024, ge=1, description="queries per search task (bounds result memory)")
    use_gpu: bool = Field(False, description="move each shard's index to its GPUs (needs faiss-gpu and num_gpus)")
    num_shards: int = Field(1, ge=1, description="index actors; targets are split over them, results merged exactly")
    num_cpus: float = Field(0.5, gt=0, description="CPUs per index actor (FAISS threads)")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per index actor (with use_gpu)")
    memory: int | None = Field(None, ge=0, description="bytes of memory reserved per index actor; None: no reservation")
    search_num_cpus: float = Field(0.25, gt=0, description="CPUs per query-search task")
