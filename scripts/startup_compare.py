"""The same job as `mobilenet classify --weights W IMAGE` in Python with torchvision, for the
start-up comparison in the README: load weights, decode, preprocess, classify, print top-5."""
import sys

import torch
import torchvision
from PIL import Image
from torchvision.models import MobileNet_V2_Weights

weights_path, image_path = sys.argv[1], sys.argv[2]
model = torchvision.models.mobilenet_v2()
model.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
model.eval()
transform = MobileNet_V2_Weights.IMAGENET1K_V2.transforms()
categories = MobileNet_V2_Weights.IMAGENET1K_V2.meta["categories"]
x = transform(Image.open(image_path).convert("RGB")).unsqueeze(0)
with torch.no_grad():
    probs = model(x).softmax(1)[0]
top = probs.topk(5)
for p, i in zip(top.values.tolist(), top.indices.tolist()):
    print(f"{i:5d} {p * 100:6.2f}% {categories[i]}")
