# The image every cluster node runs (cluster/aws.yaml, cluster/gcp.yaml, cluster/kuberay/):
# Ray's own GPU image of the pinned Ray version, with this package and its `gpu` extra
# (vLLM's CUDA wheel, faiss-gpu).
#   docker build -t <registry>/unime-ray:0.1.0 . && docker push <registry>/unime-ray:0.1.0
FROM rayproject/ray:2.60.0-py311-gpu

WORKDIR /home/ray/unime-ray
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users unime_ray ./unime_ray
RUN pip install --no-cache-dir -e '.[gpu]'
# Jobs, configs and the serving app travel with `ray job submit --working-dir .` or are
# baked in here for RayJob/RayService, which run them from this directory.
COPY --chown=ray:users jobs ./jobs
COPY --chown=ray:users configs ./configs
COPY --chown=ray:users serve ./serve
