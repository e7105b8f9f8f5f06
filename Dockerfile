# The GPU image: a CUDA base, Python, and exactly requirements.txt. Mount or download data at run time:
#   docker build -t speedrun . && docker run --gpus all --ipc=host -v $PWD/data:/speedrun/data speedrun
FROM nvidia/cuda:13.0.1-cudnn-devel-ubuntu24.04
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-dev git \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
WORKDIR /speedrun
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
CMD ["./run.sh"]
