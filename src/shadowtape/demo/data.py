"""Seeded synthetic data for the demo: a product catalog and the people who shop in it.

Everything is a pure function of a seed, so the demo sends the same personal values on every
run and the end-to-end test can regenerate them to prove that none survives sanitization.
The catalog uses one fixed seed for both service versions: staging must sell the same products
as production, or every browse would be drift.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from functools import lru_cache

from faker import Faker

CATALOG_SEED = 1337
CATALOG_SIZE = 60
_CATEGORIES = ("kitchen", "garden", "office", "outdoor", "audio", "books", "toys", "tools")
_NOUNS = (
    "kettle", "lamp", "notebook", "tent", "speaker", "chair", "backpack", "blender",
    "headphones", "planter", "drill", "puzzle", "mug", "desk", "lantern", "novel",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Address:
    street: str
    city: str
    postcode: str
    country: str


@dataclass(frozen=True, slots=True)
class Person:
    """One shopper. Every field is personal data the demo expects sanitize to remove."""

    name: str
    email: str
    phone: str
    date_of_birth: str
    address: Address
    card_number: str
    password: str
    new_phone: str  # what the shopper later changes their phone to

    def registration(self) -> dict[str, object]:
        return {
            "name": self.name,
            "email": self.email,
            "phone": self.phone,
            "date_of_birth": self.date_of_birth,
            "address": asdict(self.address),
            "password": self.password,
        }


@dataclass(frozen=True, slots=True)
class Product:
    id: int
    title: str
    category: str
    price: float
    description: str
    stock: int

    def as_json(self) -> dict[str, object]:
        return asdict(self)


@lru_cache(maxsize=4)
def catalog(seed: int = CATALOG_SEED, size: int = CATALOG_SIZE) -> tuple[Product, ...]:
    fake = Faker("en_US")
    fake.seed_instance(seed)
    rng = random.Random(seed)
    products = []
    for i in range(size):
        noun = _NOUNS[i % len(_NOUNS)]
        products.append(
            Product(
                id=1000 + i,
                title=f"{fake.color_name()} {noun}",
                category=rng.choice(_CATEGORIES),
                price=round(rng.uniform(3, 250), 2),
                description=fake.sentence(nb_words=10),
                stock=rng.randint(0, 500),
            )
        )
    return tuple(products)


def search_terms(products: tuple[Product, ...]) -> list[str]:
    """Words that find something: the nouns and colours products are named after."""
    words = {w.lower() for p in products for w in p.title.split()}
    return sorted(words)


def _phone(rng: random.Random) -> str:
    # North American numbers with valid area and exchange codes (first digit 2-9), written the
    # way people type them, so Presidio's phone recognizer has a fair chance too.
    return f"+1 {rng.randint(201, 989)}-{rng.randint(201, 989)}-{rng.randint(0, 9999):04d}"


def person(seed: int, index: int) -> Person:
    """The index-th shopper of a seeded run; independent of how many others there are."""
    fake = Faker("en_US")
    fake.seed_instance(f"{seed}:person:{index}")
    rng = random.Random(f"{seed}:phone:{index}")
    first, last = fake.first_name(), fake.last_name()
    domain = fake.free_email_domain()
    return Person(
        name=f"{first} {last}",
        email=f"{first.lower()}.{last.lower()}{rng.randint(1, 999)}@{domain}",
        phone=_phone(rng),
        date_of_birth=fake.date_of_birth(minimum_age=18, maximum_age=90).isoformat(),
        address=Address(
            street=fake.street_address(),
            city=fake.city(),
            postcode=fake.postcode(),
            country="US",
        ),
        card_number=fake.credit_card_number(card_type="visa16"),
        password=fake.password(length=14),
        new_phone=_phone(rng),
    )


def personal_values(p: Person) -> list[str]:
    """The values that must never appear in a sanitized dataset.

    Postcodes and the country are left out: five digits and "US" occur in innocent places
    (prices, ids, headers), so finding them proves nothing.
    """
    return [
        p.name,
        p.email,
        p.phone,
        p.new_phone,
        p.date_of_birth,
        p.address.street,
        p.card_number,
        p.password,
    ]
