# The GPU image: a CUDA base, Python, a C compiler, and exactly requirements.txt. Run it with the repo mounted
# over /speedrun, so the shards and logs/ land in your checkout (README: Docker):
#   docker build -t speedrun . && docker run --gpus all --ipc=host -v "$PWD":/speedrun speedrun
FROM nvidia/cuda:13.0.1-cudnn-devel-ubuntu24.04
# build-essential: Triton compiles its kernel launcher with the system C compiler (and Python.h from python3-dev)
# at run time; the CUDA devel image brings nvcc and CUDA headers, not necessarily gcc.
RUN apt-get update && apt-get install -y --no-install-recommends build-essential python3 python3-venv python3-dev \
    git && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
WORKDIR /speedrun
COPY requirements.txt requirements-base.txt ./
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
CMD ["./run.sh"]
