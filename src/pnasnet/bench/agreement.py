"""``pnasnet bench --agreement``: how far every back end and precision is from the plain model on real
photographs (:mod:`.photos`).
"""

from __future__ import annotations

from .photos import photographs


def agreement_metrics(test, reference) -> dict:
    """Agreement of ``test`` with ``reference`` ([N, K] float): plain relative errors, and the
    same on the image-dependent part (each row minus the batch mean), which is what matters when
    every image shares a large common component."""
    import torch

    a, b = test.double(), reference.double()
    ac, bc = a - a.mean(0), b - b.mean(0)
    cos = torch.nn.functional.cosine_similarity(ac, bc, dim=1)
    return {"max_rel_err": float((a - b).abs().max() / b.abs().max()),
            "rel_l2": float((a - b).norm() / b.norm()),
            "centered_rel_l2": float((ac - bc).norm() / bc.norm()),
            "centered_cosine_min": float(cos.min()), "centered_cosine_mean": float(cos.mean()),
            "image_dependent_fraction": float(bc.norm() / b.norm())}


def run_agreement(cases: list[tuple[str, str, str, int]], paths: list[tuple[str, str]], say=print) -> dict:
    """For each (label, model name, weights, size) case: every (backend, precision) path against
    the plain float32 model on the photographs."""
    import torch

    import pnasnet
    from pnasnet.inference import check_backend_choice, optimize

    out = {"photos": None, "cases": {}}
    for label, name, weights, size in cases:
        images, names = photographs(size)
        out["photos"] = names
        model = pnasnet.create_model(name, weights=weights, progress=False)
        with torch.inference_mode():
            ref_logits = model.classify(images) if model.num_classes else None
            ref_feats = model.features(images)
        case = {"model": name, "weights": str(weights), "size": size, "paths": {}}
        for backend, precision in paths:
            key = f"{backend}/{precision}"
            try:  # what this install and CPU cannot run (package, precision, int8 tooling) is skipped, saying why
                check_backend_choice(backend, precision)
            except (ValueError, ImportError) as why:
                case["paths"][key] = {"skipped": str(why)}
                continue
            if precision == "int8":
                feats, logits = _int8_two_fold(model, backend, size, images)
            else:
                fast = optimize(model, backend, precision, image_size=size)
                feats = fast.features(images)
                logits = fast.classify(images) if ref_logits is not None else None
                del fast
            entry = {"features": agreement_metrics(feats, ref_feats)}
            if ref_logits is not None:
                entry["logits"] = agreement_metrics(logits, ref_logits)
                entry["top1_agree"] = float((logits.argmax(1) == ref_logits.argmax(1)).double().mean())
            case["paths"][key] = entry
            say(f"{label} {key}: features cos(centered) min {entry['features']['centered_cosine_min']:.5f}"
                + (f", logits centered rel L2 {entry['logits']['centered_rel_l2']:.4f}, max rel err "
                   f"{entry['logits']['max_rel_err']:.2e}, top-1 agree {entry['top1_agree']:.2f}" if "logits" in entry else ""))
        out["cases"][label] = case
    return out


def _int8_two_fold(model, backend: str, size: int, images):
    """int8 outputs for every photograph from a model calibrated on the *other* half of them (and
    their mirror images): in-domain calibration, never on the image compared."""
    import torch

    from pnasnet.inference import optimize

    halves = [torch.arange(0, len(images), 2), torch.arange(1, len(images), 2)]
    feats, logits = None, None
    for calibrate, compare in ((halves[0], halves[1]), (halves[1], halves[0])):
        calibration = torch.cat([images[calibrate], images[calibrate].flip(-1)])
        fast = optimize(model, backend, "int8", image_size=size, calibration=calibration)
        f = fast.features(images[compare])
        feats = f.new_zeros(len(images), f.shape[1]) if feats is None else feats
        feats[compare] = f
        if model.num_classes:
            g = fast.classify(images[compare])
            logits = g.new_zeros(len(images), g.shape[1]) if logits is None else logits
            logits[compare] = g
        del fast
    return feats, logits


def agreement_markdown(result: dict) -> str:
    lines = ["# Agreement with the plain float32 model\n",
             f"Photographs (scikit-image): {', '.join(result['photos'] or [])}. 'centered' = each vector minus "
             "the batch mean (the image-dependent part).\n",
             "| case | path | logits max rel err | logits rel L2 | logits centered rel L2 | features centered cosine min / mean | top-1 agree |",
             "|---|---|---|---|---|---|---|"]
    for label, case in result["cases"].items():
        for key, e in case["paths"].items():
            if "skipped" in e:
                lines.append(f"| {label} | {key} | skipped: {e['skipped']} | | | | |")
                continue
            lg = e.get("logits", {})
            f = e["features"]
            lines.append(f"| {label} ({case['size']} px) | {key} | {lg.get('max_rel_err', float('nan')):.2e} | "
                         f"{lg.get('rel_l2', float('nan')):.4f} | {lg.get('centered_rel_l2', float('nan')):.4f} | "
                         f"{f['centered_cosine_min']:.5f} / {f['centered_cosine_mean']:.5f} | {e.get('top1_agree', '-')} |")
    return "\n".join(lines) + "\n"
