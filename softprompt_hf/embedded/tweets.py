"""A seeded generator of synthetic customer tweets, with everything a task can ask about them.

The embedded dataset (:mod:`softprompt_hf.embedded.build_data`) and the multitask corpus the
embedded model is pretrained on (:mod:`softprompt_hf.embedded.tasks`) both draw their tweets from
:class:`TweetGenerator`. Every tweet carries its ground truth: whether it is a complaint, its
sentiment, its topic (the industry of the company it addresses), the company, and whether it asks a
question, what kind of tweet it is (complaint, praise, inquiry or personal) and whether a complaint
is polite. Companies, people and handles are invented.

The output depends only on the seed: the generator uses its own ``random.Random`` and iterates over
lists and tuples, never over sets or dicts whose order could change.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

__all__ = ["MAX_WORDS", "MIN_WORDS", "SECTORS", "Tweet", "TweetGenerator"]

MIN_WORDS = 5
MAX_WORDS = 60


@dataclass(frozen=True)
class Tweet:
    """One synthetic tweet and its ground truth."""

    text: str
    complaint: bool
    sentiment: str  # "positive", "negative" or "neutral"
    topic: str  # a key of SECTORS, or "other" for tweets that address no company
    company: str  # lower-case company name, or "none"
    kind: str  # "complaint", "praise", "inquiry" (a question or news about a company) or "personal"
    polite: bool = False  # a complaint that asks politely instead of venting

    @property
    def question(self) -> bool:
        return "?" in self.text


@dataclass(frozen=True)
class _Sector:
    companies: tuple[tuple[str, tuple[str, ...]], ...]  # (name, handles)
    problems: tuple[str, ...]  # complaint cores
    praise: tuple[str, ...]  # positive, not a complaint
    neutral: tuple[str, ...]  # questions and news, not a complaint


# Slots: {n} a small number, {city}, {day}, {month}, {time}, {price}, {company} the company's name;
# {a|b|c} picks one of the alternatives.
SECTORS: dict[str, _Sector] = {
    "airline": _Sector(
        companies=(
            ("skylink", ("@SkyLinkAir", "@SkyLinkHelp")),
            ("aeronova", ("@AeroNova", "@AeroNovaCares")),
            ("bluejet", ("@BlueJetAirways", "@bluejet")),
        ),
        problems=(
            "my flight got cancelled and nobody told me",
            "you lost my {bag|suitcase|golf clubs|pushchair} on the flight from {city}",
            "{n} hour delay and not even a glass of water",
            "charged me {price} for a seat that doesn't even recline",
            "the app crashed at check in and I missed my {flight|connection}",
            "my {bag|suitcase} came off the belt ripped open",
            "stuck on the tarmac for {n} hours with the air con off",
            "rebooked me on a flight that leaves {day} at 5am without asking",
            "still no refund for the flight you cancelled in {month}",
            "the gate agent was so rude to my {elderly mum|little boy|wife}",
            "overbooked again and I'm the one bumped off the flight",
        ),
        praise=(
            "the crew on my flight to {city} were amazing",
            "landed early, smoothest flight I've had in years",
            "thank you for the free upgrade, what a treat",
            "found my lost {bag|suitcase|jacket} and sent it to my hotel, legends",
            "best airline food I've ever had, honestly",
            "the pilot made the landing in {city} feel like butter",
        ),
        neutral=(
            "what's the baggage allowance for flights to {city}?",
            "is there wifi on the {city} route?",
            "boarding now, see you soon {city}",
            "do you allow pets in the cabin on long flights?",
            "can I change the name on a ticket I booked for my {brother|sister|dad}?",
            "just saw that you're adding flights to {city} next {month}",
            "flying {company} to {city} on {day}",
        ),
    ),
    "telecom": _Sector(
        companies=(
            ("netwave", ("@NetWave", "@NetWaveCares")),
            ("telora", ("@TeloraMobile", "@telora_help")),
            ("conexa", ("@ConexaUK", "@Conexa")),
        ),
        problems=(
            "my {internet|broadband|wifi|landline} has been down for {n} days",
            "no signal at home again, I pay for this",
            "you doubled my {bill|monthly bill} without telling me",
            "the router drops every {n} minutes",
            "been on hold for {n} minutes just to cancel my {contract|plan}",
            "promised me 500mb and I'm getting 3",
            "the engineer never showed up {day} and nobody called",
            "my {phone line|internet|tv box} stopped working after your so called upgrade",
            "charged a {price} exit fee on a contract that already ended",
            "third router in a month and the wifi is still useless",
            "roaming charges of {price} when you said {city} was included",
        ),
        praise=(
            "the new {fibre|5g|broadband} is so fast, really impressed",
            "support fixed my {wifi|router|phone} in ten minutes, thank you",
            "great coverage even in the middle of nowhere",
            "your chat agent today was super helpful",
            "the new family plan saves us {price} a month",
        ),
        neutral=(
            "is there an outage in {city} right now?",
            "how do I unlock my phone for travel?",
            "do you have a plan with unlimited data?",
            "switching to {company} next {month}, any tips?",
            "heard you're rolling out 5g in {city}",
            "can I keep my number if I move to {city}?",
        ),
    ),
    "bank": _Sector(
        companies=(
            ("novabank", ("@NovaBank", "@NovaBankHelp")),
            ("crestline", ("@CrestlineBank", "@crestline")),
            ("pennywise", ("@PennyWiseApp", "@pennywise_support")),
        ),
        problems=(
            "my card got blocked for no reason, again",
            "the {transfer|payment} still hasn't gone through after {n} days",
            "the app logs me out every single time",
            "you charged me an overdraft fee I never agreed to",
            "{n} weeks waiting for a new {card|pin|statement} and nothing",
            "froze my account while I'm abroad in {city}",
            "nobody at the branch could explain a {price} charge",
            "my savings account was closed without any warning",
            "the mortgage team lost my documents for the {third|fourth|fifth} time",
        ),
        praise=(
            "opened a {savings account|current account} in five minutes, so easy",
            "your fraud team caught a dodgy payment, thank you",
            "love the new budgeting feature in the app",
            "the staff at the {city} branch were lovely today",
            "got my new card the day after I lost the old one",
        ),
        neutral=(
            "what's the interest rate on the {savings account|fixed saver} at the moment?",
            "can I use my card in {city} without fees?",
            "does the app support apple pay?",
            "moving my {savings|mortgage} over to {company} this week",
            "are branches open on {day}?",
        ),
    ),
    "delivery": _Sector(
        companies=(
            ("parcelpro", ("@ParcelPro", "@ParcelProHelp")),
            ("shipquick", ("@ShipQuick", "@shipquick_uk")),
            ("boxly", ("@Boxly", "@BoxlyDelivers")),
        ),
        problems=(
            "my {parcel|package|order} says delivered but it's not here",
            "your driver left my {parcel|package} in the rain",
            "tracking hasn't updated in {n} days",
            "missed delivery note when I was home all day",
            "my {parcel|package} was thrown over the fence and it's broken",
            "{n} days late and still no {parcel|package}",
            "the driver just drove off with my {parcel|return}",
            "you delivered my {parcel|package} to the wrong street twice",
            "paid {price} for next day and it's been a week",
        ),
        praise=(
            "{parcel|package|order} arrived a day early, nice one",
            "your driver went out of his way to find my house, thanks",
            "super easy return drop off today",
            "love the live tracking map",
        ),
        neutral=(
            "do you deliver on {day}?",
            "can I change the address of a {parcel|package} that's already shipped?",
            "how long does a parcel to {city} usually take?",
            "expecting a parcel from {company} today, so excited",
            "do you have a drop off point in {city}?",
        ),
    ),
    "shopping": _Sector(
        companies=(
            ("marketly", ("@Marketly", "@MarketlyCare")),
            ("trendhaus", ("@TrendHaus", "@trendhaus")),
            ("goodsgo", ("@GoodsGo", "@GoodsGoHelp")),
        ),
        problems=(
            "still waiting on my refund after {n} weeks",
            "sent me the wrong size twice",
            "my {sofa|lamp|headphones|mirror} arrived broken",
            "closed my ticket without fixing anything",
            "you cancelled my order and kept the money",
            "the {dress|jacket|rug} I got looks nothing like the picture",
            "{n} emails and not one reply about my {order|return}",
            "charged {price} for {shoes|a jacket|a sofa} that never shipped",
        ),
        praise=(
            "my new {jacket|dress|trainers} fit perfectly, love it",
            "quickest refund I've ever had, thank you",
            "great quality for the price",
            "customer service sorted my return in minutes",
        ),
        neutral=(
            "when does the {month} sale start?",
            "is the blue {jacket|dress|hoodie} coming back in stock?",
            "do you ship to {city}?",
            "just ordered {shoes|a jacket|a lamp} from {company}, fingers crossed",
            "what's your return policy on sale items?",
        ),
    ),
    "streaming": _Sector(
        companies=(
            ("streambox", ("@StreamBox", "@StreamBoxHelp")),
            ("vidora", ("@VidoraTV", "@vidora")),
            ("tunely", ("@TunelyMusic", "@tunely_support")),
        ),
        problems=(
            "the app keeps buffering every {n} seconds",
            "you charged me after I cancelled my subscription",
            "all my playlists disappeared overnight",
            "I can't log in on my TV since the update",
            "the stream freezes halfway through every episode",
            "raised the price of my plan by {price} without a word",
            "someone hacked my account and support won't help",
        ),
        praise=(
            "the new recommendations are spot on",
            "binged the whole series this weekend, what a show",
            "the offline mode saved my {n} hour flight",
            "love the new app design",
        ),
        neutral=(
            "when is season {n} coming out?",
            "is the new {show|film|album} available in {city}?",
            "can I share my account with my family?",
            "what's everyone watching on {company} tonight?",
            "just noticed the app has a new logo",
        ),
    ),
    "food": _Sector(
        companies=(
            ("freshcart", ("@FreshCart", "@FreshCartHelp")),
            ("bitedash", ("@BiteDash", "@bitedash")),
            ("pizzaroo", ("@Pizzaroo", "@PizzarooUK")),
        ),
        problems=(
            "my {pizza|curry|burger|food} arrived cold after {n} minutes",
            "half my {groceries|order} was missing",
            "wrong order again, third time this month",
            "the driver ate my fries??",
            "my order was cancelled an hour after I paid",
            "found a hair in my {pizza|salad|burger}, disgusting",
            "charged me {price} for {a meal|groceries|a pizza} that never came",
        ),
        praise=(
            "best {pizza|burger|curry} in {city}, no contest",
            "my {order|groceries|pizza} arrived in 15 minutes, amazing",
            "thanks for the free dessert, you made my night",
            "the new vegan {burger|pizza|wrap} is so good",
        ),
        neutral=(
            "are you open on {day}?",
            "do you deliver to {city}?",
            "is the two for one deal still on?",
            "ordering {company} for the game tonight",
            "what's in the new meal box?",
        ),
    ),
    "rail": _Sector(
        companies=(
            ("zoomrail", ("@ZoomRail", "@ZoomRailHelp")),
            ("metroline", ("@MetroLineTrains", "@metroline")),
        ),
        problems=(
            "{my train|the {time}} cancelled again with no warning",
            "{n} minutes late and not one announcement",
            "paid for first class and stood the whole way",
            "the ticket machine ate my card",
            "no heating on the {time} in {month}",
            "my season ticket refund was rejected for no reason",
            "the {time} was so packed I couldn't get on",
        ),
        praise=(
            "spotless train this morning and on time",
            "the guard on the {time} was so kind to my kids",
            "smooth journey to {city}, thank you",
            "love the quiet coach",
        ),
        neutral=(
            "is the {time} to {city} running today?",
            "can I take my bike on the train?",
            "how much is a season ticket to {city}?",
            "taking the train to {city} for the weekend",
            "any engineering works on {day}?",
        ),
    ),
    "energy": _Sector(
        companies=(
            ("brightgrid", ("@BrightGrid", "@BrightGridCares")),
            ("voltix", ("@VoltixEnergy", "@voltix")),
        ),
        problems=(
            "power cut for the third time this week",
            "my estimated bill is {price}, my real usage is half that",
            "the engineer never showed up for the appointment",
            "the smart meter has been broken for months",
            "you took {price} twice by direct debit",
            "{n} calls and still no one can fix my {meter|boiler|bill}",
        ),
        praise=(
            "the boiler was fixed in no time, thank you",
            "switched to your green tariff, feels good",
            "the engineer was so polite and tidy",
            "nice to get a refund on my bill for once",
        ),
        neutral=(
            "is there a power cut in {city}?",
            "how do I send a meter reading?",
            "do you have a cheaper night tariff?",
            "getting solar panels fitted by {company} on {day}",
        ),
    ),
    "electronics": _Sector(
        companies=(
            ("pixelon", ("@PixelonSupport", "@Pixelon")),
            ("korra", ("@KorraTech", "@korra_help")),
        ),
        problems=(
            "my {laptop|phone|tablet} died a week after the warranty ended",
            "the latest update bricked my {phone|watch|tablet}",
            "my {laptop|phone} gets so hot I can't hold it",
            "the repair on my {laptop|phone|camera} has taken {n} weeks",
            "the battery on my new {phone|laptop|watch} lasts {n} hours",
            "sent my {phone|laptop} back for repair and got it back more broken",
        ),
        praise=(
            "my new {laptop|phone|watch} is incredible, best purchase this year",
            "replaced my {phone|charger|headphones} under warranty in a day, thanks",
            "the battery life on this {phone|laptop} is unreal",
            "the update made my {tablet|phone} so much faster",
        ),
        neutral=(
            "when is the new {phone|laptop|watch} coming out?",
            "does the {tablet|phone} work with my old charger?",
            "is the {watch|phone} waterproof?",
            "thinking about getting a {company} {laptop|phone}, any thoughts?",
            "saw the launch event, looks interesting",
        ),
    ),
}

_COMPLAINT_EXTRAS = (
    "this is ridiculous",
    "worst customer service ever",
    "nobody answers the phone",
    "I want a refund",
    "third time this month",
    "never again",
    "do better",
    "still waiting for a reply",
    "fix this now",
    "absolutely useless",
    "so fed up",
    "I'm done with you",
    "how is this acceptable",
    "zero stars",
    "what a joke",
    "cancelling as soon as I can",
    "I've had enough",
    "your chat bot is useless",
    "every single time",
)
_COMPLAINT_CONTEXT = (
    "I've been a customer for {n} years",
    "I called {n} times",
    "I emailed support twice",
    "I was told it would be sorted by {day}",
    "I took the day off work for this",
    "my kids are waiting",
    "I have a job interview in the morning",
    "it was a birthday present",
    "I paid extra for this",
)
_COMPLAINT_QUESTIONS = (
    "why is it so hard to get a refund?",
    "how hard can it be?",
    "is anyone actually working there?",
    "what am I paying for?",
    "can someone please help?",
    "when will this be fixed?",
    "seriously??",
)
_POLITE_ASKS = (
    "could you please look into it?",
    "can you help me sort this out?",
    "please let me know what I can do.",
    "I'd appreciate a quick reply.",
    "can someone from the team get back to me?",
)
_PRAISE_EXTRAS = (
    "great job",
    "you guys rock",
    "so impressed",
    "made my day",
    "will definitely use you again",
    "ten out of ten",
    "customer for life",
    "keep it up",
    "highly recommend",
)
_NEUTRAL_EXTRAS = (
    "thanks in advance",
    "just curious",
    "asking for a friend",
    "let me know",
    "cheers",
)
# Tweets that address no company. Some are negative (a bad day is not a complaint about a company).
_PERSONAL_NEGATIVE = (
    "mondays are the worst",
    "stuck in traffic again",
    "my cat knocked my coffee over",
    "so tired of this rain",
    "burned my toast lol",
    "failed my driving test again",
    "lost my keys for the third time this week",
    "can't sleep and work starts at {time}",
    "my team lost again, what a waste of a {day}",
    "dropped my phone in the bath",
    "the neighbours are drilling at 7am",
    "forgot my lunch at home",
    "caught a cold right before my holiday",
    "spilled paint all over the carpet",
)
_PERSONAL_POSITIVE = (
    "best weekend in ages",
    "finally finished my thesis",
    "we got a new puppy!!",
    "sunny {day} in {city}, perfect",
    "made pancakes for the whole family",
    "passed my exam",
    "beach day with the kids",
    "great game last night",
    "first run of the year done",
    "coffee first then everything else",
)
_PERSONAL_NEUTRAL = (
    "anyone know a good plumber in {city}?",
    "what time does the match start on {day}?",
    "reading a book about the history of {city}",
    "thinking about painting the kitchen green",
    "off to {city} for the weekend",
    "does anyone still use a landline?",
    "cooking pasta again tonight",
)
_FRIENDS = ("@jenny_b", "@mike_t", "@sarah_k", "@dan_the_man", "@lou_88", "@chris_p", "@nina_w", "@tom_r")
_CITIES = (
    "London", "Leeds", "Dublin", "Paris", "Berlin", "Madrid", "Boston", "Denver",
    "Toronto", "Sydney", "Lagos", "Mumbai", "Glasgow", "Lisbon", "Chicago", "Austin",
)  # fmt: skip
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = ("January", "March", "April", "June", "July", "September", "October", "December")
_TIMES = ("6:40", "7:15", "8:02", "9am", "17:30", "6pm", "10:45")
_PRICES = ("$45", "$120", "£30", "£89", "€60", "€15", "$9.99", "£250")
_NUMBERS = ("2", "3", "4", "5", "6", "10", "12", "20", "45", "two", "three", "five")
_ANGRY_EMOJI = ("😡", "😤", "🙄", "😠", "🤬", "😩", "👎", "💔", "😒", "🤦")
_HAPPY_EMOJI = ("😍", "🙌", "❤️", "👍", "🎉", "😊", "🥳", "👏", "✨", "😁")
_NEUTRAL_EMOJI = ("🤔", "👀", "🙂", "✈️", "📦", "☕", "📱")
_SAD_EMOJI = ("😭", "😩", "😞", "🙃", "😴", "☔")
_COMPLAINT_TAGS = ("#fail", "#customerservice", "#neveragain", "#notimpressed", "#disappointed", "#help")
_PRAISE_TAGS = ("#happycustomer", "#thankyou", "#greatservice", "#love")
_OPENERS_ANGRY = ("", "", "", "hey", "so", "seriously", "ugh", "wow", "unbelievable.", "once again")
_OPENERS_CALM = ("", "", "", "hi", "hello", "hey", "quick question,", "morning")
_SLANG = (
    ("you", "u"),
    ("please", "pls"),
    ("your", "ur"),
    ("thanks", "thx"),
    ("because", "cos"),
    ("really", "rly"),
)


class TweetGenerator:
    """Draws synthetic tweets with their ground truth, deterministically from ``seed``.

    Example:

    ```python
    >>> gen = TweetGenerator(seed=0)
    >>> tweet = gen.tweet(complaint=True)
    >>> tweet.complaint, tweet.sentiment
    (True, 'negative')

    ```
    """

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._sector_names = tuple(SECTORS)

    def tweet(self, complaint: bool | None = None) -> Tweet:
        """Returns one tweet of ``MIN_WORDS`` to ``MAX_WORDS`` words; ``complaint=None`` draws it 50/50."""
        rng = self._rng
        if complaint is None:
            complaint = rng.random() < 0.5
        while True:
            tweet = self._complaint() if complaint else self._no_complaint()
            if MIN_WORDS <= len(tweet.text.split()) <= MAX_WORDS:
                return tweet

    # -- building blocks -------------------------------------------------------------------------

    def _fill(self, template: str, company: str = "") -> str:
        rng = self._rng
        slots = {
            "n": rng.choice(_NUMBERS),
            "city": rng.choice(_CITIES),
            "day": rng.choice(_DAYS),
            "month": rng.choice(_MONTHS),
            "time": rng.choice(_TIMES),
            "price": rng.choice(_PRICES),
            "company": company,
        }
        text = re.sub(r"\{(\w+)\}", lambda m: slots[m.group(1)], template)
        return re.sub(r"\{([^{}]*)\}", lambda m: rng.choice(m.group(1).split("|")), text)

    def _fills(self, pool: tuple[str, ...], k: int, company: str = "") -> list[str]:
        """``k`` different templates of ``pool``, filled in."""
        return [self._fill(t, company) for t in self._rng.sample(pool, min(k, len(pool)))]

    def _pick_company(self) -> tuple[str, _Sector, str, str]:
        rng = self._rng
        topic = rng.choice(self._sector_names)
        sector = SECTORS[topic]
        name, handles = rng.choice(sector.companies)
        return topic, sector, name, rng.choice(handles)

    def _join(self, parts: list[str]) -> str:
        """Joins sentence-like parts with varied punctuation."""
        rng = self._rng
        out = ""
        for part in parts:
            if not part:
                continue
            if not out:
                out = part
                continue
            if out[-1] in ".!?,":
                out += " " + part
            else:
                out += rng.choice((". ", ". ", "! ", ", ", " - ", "... ", " ")) + part
        if out and out[-1] not in ".!?" and rng.random() < 0.4:
            out += rng.choice((".", "!", "!!", "..."))
        return out

    def _place_handle(self, body: str, handle: str, opener: str) -> str:
        rng = self._rng
        r = rng.random()
        if r < 0.55:
            text = f"{handle} {opener} {body}" if opener else f"{handle} {body}"
        elif r < 0.8:
            text = f"{opener} {handle} {body}" if opener else f"{body} {handle}"
        else:
            text = f"{opener} {body} {handle}" if opener else f"{body} {handle}"
        return text

    def _decorate(self, text: str, emoji: tuple[str, ...], tags: tuple[str, ...], p_emoji: float) -> str:
        rng = self._rng
        if rng.random() < p_emoji:
            text += " " + rng.choice(emoji) * rng.choice((1, 1, 1, 2, 3))
        if tags and rng.random() < 0.2:
            text += " " + rng.choice(tags)
        if rng.random() < 0.05:
            text += " https://t.co/" + "".join(
                rng.choice("abcdefghijkmnpqrstuvwxyzABCDEFGH0123456789") for _ in range(10)
            )
        if rng.random() < 0.15 and rng.random() < 0.5:
            text = f"{rng.choice(_FRIENDS)} {text}"
        return self._noise(text)

    def _noise(self, text: str) -> str:
        """Lower-casing, shouting, slang, HTML-escaped ampersands and typos."""
        rng = self._rng
        if rng.random() < 0.25:
            text = text.lower()
        words = text.split(" ")
        if rng.random() < 0.3:
            for long_form, short_form in _SLANG:
                words = [short_form if w.lower() == long_form and rng.random() < 0.7 else w for w in words]
        if rng.random() < 0.06:
            i = rng.randrange(len(words))
            if not words[i].startswith(("@", "#", "http")):
                words[i] = words[i].upper()
        n_typos = rng.choice((0, 0, 0, 0, 1, 1, 2))
        for _ in range(n_typos):
            i = rng.randrange(len(words))
            w = words[i]
            if len(w) < 4 or w.startswith(("@", "#", "http")) or not w.isalpha():
                continue
            j = rng.randrange(1, len(w) - 1)
            kind = rng.choice(("swap", "drop", "double"))
            if kind == "swap":
                w = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
            elif kind == "drop":
                w = w[:j] + w[j + 1 :]
            else:
                w = w[:j] + w[j] + w[j:]
            words[i] = w
        text = " ".join(words)
        text = text.replace(" and ", " &amp; ") if rng.random() < 0.08 else text
        return re.sub(r"\s+", " ", text).strip()

    # -- the two classes -------------------------------------------------------------------------

    def _complaint(self) -> Tweet:
        rng = self._rng
        topic, sector, name, handle = self._pick_company()
        n_problems = rng.choice((1, 1, 1, 1, 2, 2, 3))
        parts = self._fills(sector.problems, n_problems, name)
        polite = rng.random() < 0.2
        if polite:
            if rng.random() < 0.5:
                parts += self._fills(_COMPLAINT_CONTEXT, 1, name)
            parts.append(rng.choice(_POLITE_ASKS))
            if rng.random() < 0.4:
                parts.append(rng.choice(("thanks", "thank you", "cheers")))
            opener = rng.choice(_OPENERS_CALM)
        else:
            n_extra = rng.choice((0, 1, 1, 2, 2, 3, 4, 5))
            parts += self._fills((*_COMPLAINT_EXTRAS, *_COMPLAINT_CONTEXT, *_COMPLAINT_QUESTIONS), n_extra, name)
            if rng.random() < 0.2:
                parts.insert(0, self._fill(rng.choice(_COMPLAINT_CONTEXT), name))
            opener = rng.choice(_OPENERS_ANGRY)
        text = self._place_handle(self._join(parts), handle, opener)
        text = self._decorate(text, _ANGRY_EMOJI, _COMPLAINT_TAGS, 0.15 if polite else 0.45)
        return Tweet(
            text=text, complaint=True, sentiment="negative", topic=topic, company=name, kind="complaint", polite=polite
        )

    def _no_complaint(self) -> Tweet:
        rng = self._rng
        kind = rng.choices(("praise", "neutral", "personal"), weights=(0.35, 0.35, 0.3))[0]
        if kind == "personal":
            return self._personal()
        topic, sector, name, handle = self._pick_company()
        if kind == "praise":
            parts = self._fills(sector.praise, rng.choice((1, 1, 1, 2, 2, 3)), name)
            parts += rng.sample(_PRAISE_EXTRAS, rng.choice((0, 1, 1, 2, 3)))
            if rng.random() < 0.3:
                parts.insert(0, rng.choice(("thank you", "big thanks", "shoutout to the team", "honestly")))
            text = self._place_handle(self._join(parts), handle, rng.choice(("", "", "wow", "hey")))
            text = self._decorate(text, _HAPPY_EMOJI, _PRAISE_TAGS, 0.55)
            return Tweet(text=text, complaint=False, sentiment="positive", topic=topic, company=name, kind="praise")
        parts = self._fills(sector.neutral, rng.choice((1, 1, 1, 2, 2, 3)), name)
        parts += rng.sample(_NEUTRAL_EXTRAS, rng.choice((0, 0, 1, 1, 2)))
        text = self._place_handle(self._join(parts), handle, rng.choice(_OPENERS_CALM))
        text = self._decorate(text, _NEUTRAL_EMOJI, (), 0.25)
        return Tweet(text=text, complaint=False, sentiment="neutral", topic=topic, company=name, kind="inquiry")

    def _personal(self) -> Tweet:
        rng = self._rng
        sentiment = rng.choice(("negative", "negative", "positive", "neutral"))
        bank, emoji = {
            "negative": (_PERSONAL_NEGATIVE, _SAD_EMOJI),
            "positive": (_PERSONAL_POSITIVE, _HAPPY_EMOJI),
            "neutral": (_PERSONAL_NEUTRAL, _NEUTRAL_EMOJI),
        }[sentiment]
        text = self._join(self._fills(bank, rng.choice((1, 1, 2, 2, 3, 4))))
        if rng.random() < 0.35:
            text = f"{rng.choice(_FRIENDS)} {text}"
        text = self._decorate(text, emoji, ("#mood", "#life", "#weekend"), 0.5)
        return Tweet(text=text, complaint=False, sentiment=sentiment, topic="other", company="none", kind="personal")
