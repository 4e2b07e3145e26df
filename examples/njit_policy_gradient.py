"""Many independent bandit agents learning softmax policies by REINFORCE, in Numba.

Each agent faces its own K-armed bandit and keeps action scores theta (K,).
At every step it samples an action a from softmax(theta), receives a noisy
reward r, and moves theta along r_advantage * grad log pi(a). For a softmax
policy that gradient is onehot(a) - softmax(theta), which is minus the
gradient of the cross-entropy of theta against the label a, so one call of
``fastxent.cross_entropy_with_grad(theta, a, grad_out=g)`` inside @njit gives
it (and the loss, -log pi(a)), with no allocation. The agents run in a
``prange`` loop; fastxent's compiled functions are serial, so this is safe.

    python examples/njit_policy_gradient.py          # 4096 agents, 2000 steps
    python examples/njit_policy_gradient.py --fast   # a quick run (used by the tests)
"""

import argparse
import time

import numpy as np
from numba import njit, prange

import fastxent


@njit(parallel=True)
def train(means, steps, lr, seed):
    """Return the mean reward of all agents per step and the final policies' scores."""
    n_agents, n_actions = means.shape
    theta = np.zeros((n_agents, n_actions))
    grad = np.empty((n_agents, n_actions))
    baseline = np.zeros(n_agents)
    rewards = np.zeros((steps, n_agents))
    for agent in prange(n_agents):
        np.random.seed(seed + agent)
        scores = theta[agent]
        g = grad[agent]
        for t in range(steps):
            # sample an action from softmax(scores)
            probs = fastxent.softmax(scores, out=g)
            u = np.random.random()
            action = n_actions - 1
            acc = 0.0
            for k in range(n_actions):
                acc += probs[k]
                if u < acc:
                    action = k
                    break
            reward = means[agent, action] + 0.5 * np.random.standard_normal()
            rewards[t, agent] = reward
            # g = softmax(scores) - onehot(action) = -grad log pi(action)
            fastxent.cross_entropy_with_grad(scores, action, grad_out=g)
            advantage = reward - baseline[agent]
            baseline[agent] += 0.05 * (reward - baseline[agent])
            for k in range(n_actions):
                scores[k] -= lr * advantage * g[k]
    mean_reward = np.empty(steps)
    for t in range(steps):
        mean_reward[t] = rewards[t].mean()
    return mean_reward, theta


def main(fast=False):
    n_agents, n_actions, steps = (512, 5, 400) if fast else (4096, 5, 2000)
    rng = np.random.default_rng(0)
    means = rng.standard_normal((n_agents, n_actions))
    start = time.perf_counter()
    mean_reward, theta = train(means, steps, 0.1, 1)
    elapsed = time.perf_counter() - start
    window = steps // 10
    first, last = mean_reward[:window].mean(), mean_reward[-window:].mean()
    best = means.max(axis=1).mean()
    chose_best = float(np.mean(theta.argmax(axis=1) == means.argmax(axis=1)))
    print(f"{n_agents} agents, {n_actions} actions, {steps} steps in {elapsed:.2f} s (compile included)")
    print(f"mean reward: first {window} steps {first:.3f}, last {window} steps {last:.3f}, best possible {best:.3f}")
    print(f"agents whose policy prefers their best arm: {chose_best:.0%}")
    return dict(first=first, last=last, best=best, chose_best=chose_best)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="a small, quick run")
    main(parser.parse_args().fast)
