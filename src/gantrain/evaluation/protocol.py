"""The protocol card every image metric carries (made by cards.py), read: which implementation computed it, in
which network's features (the weights' sha256), at which resize, against which real images or statistics file.
FIDs move by points with any of these (clean-fid measured it), so numbers are only ranked together when their
cards agree, and say so when they do not. Plain dicts only: gantrain report reads them without torch."""

FOOTING = ("features", "weights_sha256", "resize", "reference")  # what must agree for two numbers to rank together


def footing(card: dict) -> dict:
    """What two numbers must share to be ranked together: the feature network, its weights, the resize and the
    real side (which data, or which statistics file under which protocol); n may differ (it is noted)."""
    if "reference" in card:
        made = card["reference"]["protocol"]
        reference = f"statistics file {card['reference']['sha256']} ({made if isinstance(made, str) else 'gantrain stats'})"
    elif "real" in card:
        reference = f"{card['real']['data']} {card['real']['content_hash']}"
    else:
        reference = "none"
    return {k: card[k] for k in FOOTING[:-1] if k in card} | {"reference": reference}


def differences(cards: list[dict]) -> list[str]:
    """Which parts of the footing differ among these cards (an empty list: all alike)."""
    feet = [footing(c) for c in cards if c]
    return [k for k in FOOTING if len({str(f.get(k)) for f in feet}) > 1]


def describe(card: dict) -> str:
    """A card on one line, for tables' legends and logs."""
    parts = [card.get("implementation", card.get("features", "?"))]
    if "weights" in card:
        parts.append(f"weights {card['weights']}, sha256 {card['weights_sha256'][:12]}")
    elif "weights_sha256" in card:
        parts.append(f"weights sha256 {card['weights_sha256'][:12]}")
    if "resize" in card:
        parts.append(f"resize {card['resize']}")
    if "real" in card:
        r = card["real"]
        parts.append(f"real: {r['used']} of the {r['images']} images of {r['data']} ({r['split']}, content {r['content_hash']})")
    elif "reference" in card:
        r = card["reference"]
        protocol = r["protocol"] if isinstance(r["protocol"], str) else "gantrain stats: " + describe(r["protocol"])
        parts.append(f"real: statistics file {r['file']} (sha256 {r['sha256']}, protocol {protocol})")
    return "; ".join(parts)
