"""Loads a prototype model saved with PROTO_SAVE and probes it: eval at several CFG scales and
spacings, and how much the position words move the predicted x0 at high t.
usage: shapes_probe.py MODEL.pt (in the reference venv)"""
import sys, torch, numpy as np
sys.path.insert(0, __import__("os").path.dirname(__file__))
import shapes_recipe as R
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

path = sys.argv[1]
ck = torch.load(path)
variant = ck["variant"]
unet = UNet2DConditionModel(**R.unet_config(variant)); unet.load_state_dict(ck["unet"]); unet.eval()
te = CLIPTextModel(CLIPTextConfig.from_pretrained(f"{R.MODEL}/text_encoder")); te.load_state_dict(ck["te"]); te.eval()
vae = AutoencoderKL.from_pretrained(f"{R.MODEL}/vae").eval()
sf = vae.config.scaling_factor
tok = CLIPTokenizer.from_pretrained(R.TOK)
torch.set_num_threads(2)

@torch.no_grad()
def x0_shift(t_val):
    # Same noise, captions that differ only in position: where does predicted x0 change?
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    ac = sched.alphas_cumprod
    g = torch.Generator().manual_seed(3)
    x = torch.randn((8, 4, 16, 16), generator=g)
    res = {}
    for p in ["left", "right", "top", "bottom"]:
        caps = [f"a large red circle {R.PHRASE[p]} on a blue background"] * 8
        ids = tok(caps, padding="max_length", max_length=77, return_tensors="pt").input_ids
        c = te(ids).last_hidden_state
        e = unet(x, torch.full((8,), t_val), encoder_hidden_states=c).sample
        a = ac[t_val]
        x0 = (x - (1 - a).sqrt() * e) / a.sqrt()
        res[p] = x0
    lr = (res["left"] - res["right"]).abs().mean(dim=(0, 1))  # 16x16
    tb = (res["top"] - res["bottom"]).abs().mean(dim=(0, 1))
    d = (res["left"] - res["right"]).mean(dim=(0, 1))
    # Left minus right: positive on the left half if the text moves the shape.
    print(f"t={t_val}: |x0(left)-x0(right)| mean {lr.mean():.4f}; left-half signed {d[:, :8].mean():+.4f} right-half {d[:, 8:].mean():+.4f}; |top-bottom| {tb.mean():.4f}")

for t in [999, 950, 900, 700, 400]:
    x0_shift(t)
for cfg in [1.0, 3.0, 7.5]:
    for spacing in ["leading", "trailing"]:
        sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing=spacing)
        print(f"cfg {cfg} {spacing}:", end="")
        R.CFG = cfg
        R.evaluate(te, unet, vae, tok, sched, sf)
