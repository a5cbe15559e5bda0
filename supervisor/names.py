"""Readable random container names, in the docker style adjective_noun."""

import secrets

_ADJECTIVES = ["brave", "calm", "clever", "eager", "fancy", "gentle", "happy", "jolly", "keen", "lucky", "merry", "nimble", "proud", "quick", "quiet", "sharp", "steady", "swift", "tidy", "witty", "bold", "bright", "cosy", "daring"]
_NOUNS = ["badger", "bison", "colt", "falcon", "fox", "gecko", "heron", "ibex", "jackal", "lynx", "marmot", "mustang", "otter", "pony", "puffin", "quail", "raven", "stallion", "tapir", "walrus", "yak", "zebra", "mare", "foal"]


def random_name() -> str:
    name = f"{secrets.choice(_ADJECTIVES)}_{secrets.choice(_NOUNS)}"
    # A numeric suffix keeps names unique past the few hundred combinations.
    return f"{name}{secrets.randbelow(100)}" if secrets.randbelow(4) == 0 else name
