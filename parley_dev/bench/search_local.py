"""Measure the SDK's on-device search index: indexing speed, bytes, query latency.

    .venv/bin/python scripts/bench_search_local.py                 # 100k messages
    .venv/bin/python scripts/bench_search_local.py --quick         # 10k, a smoke run
    .venv/bin/python scripts/bench_search_local.py --json out.json

It builds a device store (a real file: WAL, synchronous=FULL, as the SDK opens
it) and fills its index with seeded, realistic chat text in several languages
(English, French, German, Spanish, Chinese, Japanese, Korean, with emoji), 40
conversations, as a backfill does: a page of 200 messages per transaction.
Then it measures, in the same run:

- ``index_msgs_per_s``: the backfill path (200 messages per commit) over all
  messages; ``index_live_msgs_per_s``: one commit per message (the stream's
  path, each an fsync) over a sample.
- ``index_bytes_per_100k``: the pages of the index's tables and indexes
  (``dbstat``), scaled to 100k messages; split into the FTS5 index and the
  stored messages (ids and text, kept for results and snippets).
- ``query_p50_ms`` / ``query_p99_ms``: the first page (20 results with
  snippets) of a mix of queries: common and rare words, 2-3 letter prefixes,
  AND of two words, phrases, Chinese/Japanese/Korean words and single Han
  characters, and the same inside one conversation. Target (issue 18): p99 <=
  20 ms over 100k messages.

:func:`run` returns the report as a dict, for a ``parley bench`` scenario to embed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parley_sdk import DeviceStore, IndexedMessage, SearchIndex

QUERY_P99_TARGET_MS = 20.0
CONVERSATIONS = 40
PAGE = 200
BASE_TIME = 1_767_225_600.0  # 2026-01-01


def _words(text: str, separator: str | None = None) -> list[str]:
    return text.split(separator)


_ENGLISH = _words(
    "the to i you a and it is that of in for me on have be my we are so this not but "
    "just was with do at can what will no if get your all up out like now know about "
    "they how good going see time one ok yes think there then when here lol want "
    "today tomorrow tonight need would come back home work dinner lunch meeting call "
    "later sure thanks great love got did really right let make still well some "
    "morning night week weekend friday monday game movie coffee train bus car late "
    "early sorry happy birthday party photo send sent message phone email address "
    "office project deadline report review team doctor appointment school kids "
    "weather rain sunny cold hot beach trip flight hotel booking ticket concert music "
    "restaurant pizza sushi burger salad beer wine tea cake shopping store price"
)
_FRENCH = _words(
    "je tu il elle nous vous ils le la les un une des de du et est pas ne que qui "
    "pour dans sur avec ce cette mais ou donc oui non merci bonjour salut demain "
    "ce soir aujourd'hui l'arbre l'école l'heure d'accord d'abord qu'il qu'elle "
    "j'ai c'est n'est s'il café déjà très bientôt être avoir faire aller voir "
    "manger travail réunion rendez-vous métro gare billet fête anniversaire été "
    "hiver élève écrire prêt à côté où"
)
_GERMAN = _words(
    "ich du er sie wir ihr es der die das ein eine und ist nicht zu mit auf für von "
    "aber auch noch schon heute morgen abend danke bitte ja nein gut später treffen "
    "Müller Schröder Größe Straße Bäcker Tür Käse Frühstück Grüße müssen können "
    "möchten über für fährt Zug Büro Arbeit Wochenende Geburtstag schön"
)
_SPANISH = _words(
    "yo tú él ella nosotros el la los las un una y es no que de en por para con "
    "pero sí gracias hola mañana noche hoy después reunión trabajo cumpleaños "
    "fiesta café niño año también está aquí allí comida cena playa"
)
_CHINESE = _words(
    "我 你 他 她 们 的 了 是 在 不 有 这 那 个 明 天 今 晚 去 来 北 京 上 海 出 差 "
    "吃 饭 工 作 会 议 朋 友 电 话 时 间 地 方 学 校 老 师 公 司 家 人 好 吗 呢 吧 "
    "中 国 东 西 南 门 口 车 站 飞 机 票 酒 店 医 生 病 钱 买 卖 开 关 看 听 说 写"
)
_CHINESE_WORDS = _words(
    "北京 上海 明天 今天 晚上 出差 吃饭 工作 会议 朋友 电话 时间 学校 老师 公司 飞机 酒店 医生"
)
_JAPANESE = _words(
    "東京都に住んでいます|明日会いましょう|今日はありがとう|駅で待っています|"
    "大阪に行きます|ご飯を食べた|仕事が終わった|電車が遅れています|"
    "週末は京都へ|映画を見に行こう|会議は三時から|誕生日おめでとう",
    "|",
)
_KOREAN = _words(
    "서울에서 만나요|내일 봐요|감사합니다|회의가 있어요|점심 먹었어요|"
    "지하철이 늦어요|주말에 부산에 가요|생일 축하해요|커피 한잔 할까요|"
    "집에 가는 중이에요",
    "|",
)
_EMOJI = ["😂", "❤️", "👍", "🙏", "🎉", "🍕", "😅", "🔥", "👋🏽", "🇫🇷"]
_SYLLABLES = _words("ka ri to mo sa ne lu vi de pa zo gi fe ha ru ti mi ko na be")


def _zipf(words: list[str], rng: random.Random, count: int) -> list[str]:
    weights = [1.0 / (rank + 1) for rank in range(len(words))]
    return rng.choices(words, weights=weights, k=count)


@dataclass(frozen=True)
class Corpus:
    rng: random.Random
    rare: list[str]

    @classmethod
    def seeded(cls, seed: int) -> Corpus:
        rng = random.Random(seed)
        # A long tail of names, places and typos that each appear rarely.
        rare = ["".join(rng.choices(_SYLLABLES, k=rng.randint(2, 4))) for _ in range(30_000)]
        return cls(rng, rare)

    def latin(self, words: list[str]) -> str:
        rng = self.rng
        length = max(1, int(rng.lognormvariate(1.9, 0.7)))
        chosen = _zipf(words, rng, length)
        if rng.random() < 0.3:
            chosen[rng.randrange(len(chosen))] = rng.choice(self.rare)
        text = " ".join(chosen)
        return text[0].upper() + text[1:] + rng.choice(["", "", ".", "!", "?", "..."])

    def chinese(self) -> str:
        rng = self.rng
        chars = _zipf(_CHINESE, rng, max(2, int(rng.lognormvariate(2.3, 0.5))))
        for _ in range(rng.randint(0, 2)):
            chars.insert(rng.randrange(len(chars) + 1), rng.choice(_CHINESE_WORDS))
        return "".join(chars) + rng.choice(["", "\u3002", "\uff01", "\uff1f"])

    def message(self) -> str:
        rng = self.rng
        roll = rng.random()
        if roll < 0.55:
            text = self.latin(_ENGLISH)
        elif roll < 0.65:
            text = self.latin(_FRENCH)
        elif roll < 0.73:
            text = self.latin(_GERMAN)
        elif roll < 0.80:
            text = self.latin(_SPANISH)
        elif roll < 0.88:
            text = self.chinese()
        elif roll < 0.94:
            text = rng.choice(_JAPANESE)
        elif roll < 0.98:
            text = rng.choice(_KOREAN) + " " + rng.choice(_KOREAN)
        else:
            return "".join(rng.choices(_EMOJI, k=rng.randint(1, 3)))
        if rng.random() < 0.15:
            spot = rng.randrange(len(text) + 1)
            text = text[:spot] + rng.choice(_EMOJI) + text[spot:]
        return text

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def messages(self, count: int) -> Iterator[IndexedMessage]:
        # Server ids are UUIDs; their size is most of what a message costs.
        conversations = [conversation_id(number) for number in range(CONVERSATIONS)]
        senders = [(self.uuid(), self.uuid()) for _ in range(8)]
        for number in range(count):
            account, device = self.rng.choice(senders)
            yield IndexedMessage(
                conversation_id=conversations[number % CONVERSATIONS],
                message_id=self.uuid(),
                seq=number // CONVERSATIONS + 1,
                sender_account_id=account,
                sender_device_id=device,
                sent_at=BASE_TIME + number * 3.7,
                text=self.message(),
            )


def conversation_id(number: int) -> str:
    return str(uuid.UUID(int=number + 1, version=4))


QUERIES: dict[str, list[str]] = {
    "common_word": ["the", "lunch", "tomorrow", "merci", "danke", "gracias"],
    "rare_word": [],  # filled from the corpus' long tail
    "prefix": ["mee*", "to*", "bir*", "caf*", "gr*", "tom*", "wo*", "fr*"],
    "two_words": ["see you", "dinner tonight", "coffee morning", "merci demain"],
    "phrase": ['"see you"', '"thank you"', '"c\'est"'],
    "diacritics": ["cafe", "muller", "Mueller", "strasse", "ecole", "larbre", "arbre"],
    "cjk_word": ["北京", "出差", "東京", "会議", "서울", "회의", "만나요"],
    "han_char": ["北", "天", "京", "電"],
}


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def _index_bytes(store: DeviceStore) -> dict[str, int]:
    rows = store.connection.execute(
        "SELECT name, sum(pgsize) FROM dbstat WHERE name LIKE 'search%'"
        " OR name = 'sqlite_autoindex_search_docs_1' GROUP BY name"
    ).fetchall()
    sizes = {str(name): int(size) for name, size in rows}
    fts = sum(size for name, size in sizes.items() if name.startswith("search_fts"))
    return {"fts": fts, "messages": sum(sizes.values()) - fts, "total": sum(sizes.values())}


def run(*, messages: int, queries: int = 600, seed: int = 18, directory: Path) -> dict[str, Any]:
    corpus = Corpus.seeded(seed)
    store = DeviceStore.open(directory / "device.db")
    index = SearchIndex(store)
    batch: list[IndexedMessage] = []
    started = time.perf_counter()
    for message in corpus.messages(messages):
        batch.append(message)
        if len(batch) == PAGE:
            _commit(index, batch)
            batch = []
    if batch:
        _commit(index, batch)
    index_seconds = time.perf_counter() - started

    live_sample = min(1000, max(100, messages // 100))
    live = list(Corpus.seeded(seed + 1).messages(live_sample))
    started = time.perf_counter()
    for message in live:
        index.index(
            IndexedMessage(
                message.conversation_id,
                message.message_id[:-4] + "live",
                message.seq,
                message.sender_account_id,
                message.sender_device_id,
                message.sent_at + 0.5,
                message.text,
            )
        )
    live_seconds = time.perf_counter() - started
    sizes = _index_bytes(store)
    total = messages + live_sample

    rng = random.Random(seed)
    mix = dict(QUERIES, rare_word=rng.sample(corpus.rare[:2000], 8))
    timings: dict[str, list[float]] = {name: [] for name in mix}
    timings["one_conversation"] = []
    for number in range(queries):
        kind = list(mix)[number % len(mix)]
        query = rng.choice(mix[kind])
        scoped = (number // len(mix)) % 4 == 3
        began = time.perf_counter()
        index.search(
            query,
            conversation_id=conversation_id(rng.randrange(CONVERSATIONS)) if scoped else None,
        )
        elapsed = (time.perf_counter() - began) * 1000
        timings["one_conversation" if scoped else kind].append(elapsed)
    every = [t for values in timings.values() for t in values]
    store.close()
    p99 = _percentile(every, 0.99)
    return {
        "environment": {
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "cpus": os.cpu_count(),
            "load_average_1m": round(os.getloadavg()[0], 2),
        },
        "messages": total,
        "index_msgs_per_s": round(messages / index_seconds),
        "index_live_msgs_per_s": round(live_sample / live_seconds),
        "index_bytes": sizes,
        "index_bytes_per_100k": {k: round(v * 100_000 / total) for k, v in sizes.items()},
        "bytes_per_message": round(sizes["total"] / total, 1),
        "queries": len(every),
        "query_p50_ms": round(statistics.median(every), 3),
        "query_p99_ms": round(p99, 3),
        "query_max_ms": round(max(every), 3),
        "query_p99_ms_by_kind": {
            kind: round(_percentile(values, 0.99), 3) for kind, values in timings.items() if values
        },
        "targets": {
            "query_p99_ms": {
                "target": QUERY_P99_TARGET_MS,
                "value": round(p99, 3),
                "verdict": "pass" if p99 <= QUERY_P99_TARGET_MS else "fail",
            }
        },
    }


def _commit(index: SearchIndex, batch: list[IndexedMessage]) -> None:
    # As a backfill page: one transaction, its checkpoint with it.
    index.record_backfill(
        batch[0].conversation_id,
        batch,
        listed={m.message_id for m in batch},
        after_seq=0,
        through_seq=0,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="10k messages, 300 queries")
    parser.add_argument("--queries", type=int, default=600)
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    messages, queries = (10_000, 300) if args.quick else (args.messages, args.queries)
    with tempfile.TemporaryDirectory(prefix="parley-search-bench-") as directory:
        report = run(messages=messages, queries=queries, seed=args.seed, directory=Path(directory))
    text = json.dumps(report, indent=2, ensure_ascii=False)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n", encoding="utf-8")
    return 0 if report["targets"]["query_p99_ms"]["verdict"] == "pass" else 1


if __name__ == "__main__":
    sys.exit(main())
