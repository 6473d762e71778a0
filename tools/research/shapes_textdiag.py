"""Probes a prototype text encoder saved with PROTO_SAVE: how far apart the hidden states of the
nine position phrases (and of colour phrases) lie at a few token positions, relative to their
norm. usage: shapes_textdiag.py MODEL.pt (in the reference venv)"""
import sys, torch
sys.path.insert(0, __import__("os").path.dirname(__file__))
import shapes_recipe as R
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
ck = torch.load(sys.argv[1])
te = CLIPTextModel(CLIPTextConfig.from_pretrained(f"{R.MODEL}/text_encoder")); te.load_state_dict(ck["te"]); te.eval()
tok = CLIPTokenizer.from_pretrained(R.TOK)
def feats(caps):
    ids = tok(caps, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad(): return te(ids).last_hidden_state
pos = feats([R.PHRASE[p] for p in R.POS])
col = feats([f"{c} background" for c in R.COLOURS])
for name, h in [("position phrases", pos), ("colour phrases", col)]:
    for k in [1, 3, 6, 20, 76]:
        x = h[:, k]; print(name, k, "rel dist", round((torch.cdist(x, x).sum() / (len(x) * (len(x) - 1)) / x.norm(dim=1).mean()).item(), 3))
