"""An example plug-in role (the README's worked example): failure events per 100 env steps, by kind."""

from roles.base import AnalyseInput, AnalyseOutput, Role, RoleContext


class FailureRate(Role[AnalyseInput, AnalyseOutput]):
    """Failure events per 100 env steps, by kind, over the incumbent's dev episodes."""

    name = "failure_rate"
    stage = "analyse"
    Input = AnalyseInput
    Output = AnalyseOutput

    def run(self, data: AnalyseInput, ctx: RoleContext) -> AnalyseOutput:
        episodes = data.eval_result["episodes"]
        steps = sum(e["length"] for e in episodes) or 1
        counts: dict[str, int] = {}
        for episode in episodes:
            for event in episode["events"]:
                counts[event["kind"]] = counts.get(event["kind"], 0) + 1
        rates = {kind: round(100 * n / steps, 3) for kind, n in counts.items()}
        summary = ", ".join(f"{kind}: {rate} per 100 steps" for kind, rate in rates.items()) or "no failure events"
        ctx.decide(summary, per_100_steps=rates)
        return AnalyseOutput(summary=summary, details={"per_100_steps": rates})
