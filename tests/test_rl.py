"""The RL building blocks: replay buffer, truncated-normal noise, and the actor-critic (DDPG and TD3 configs)."""
import numpy as np
import pytest
import torch

from autoq.host.rl.actor_critic import ActorCritic, ActorCriticConfig, soft_update
from autoq.host.rl.buffer import Batch, ReplayBuffer
from autoq.host.rl.noise import NoiseSchedule, truncated_normal


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_buffer_keeps_newest_transitions_fifo_and_round_trips():
    buf = ReplayBuffer(5, 2, 1)
    for i in range(3):
        buf.add([i, i], [i], i, [i + 1, i + 1], 0.0)
    buf.add(np.arange(4).repeat(2).reshape(4, 2) + 10, np.arange(4) + 10, np.arange(4) + 10.0, np.zeros((4, 2)), 1.0)
    assert len(buf) == 5
    assert sorted(buf.state_dict()["rewards"].tolist()) == [2, 10, 11, 12, 13]
    batch = buf.sample(7, np.random.default_rng(0))
    assert isinstance(batch, Batch) and batch.states.shape == (7, 2) and batch.actions.shape == (7, 1)
    assert batch.rewards.shape == batch.dones.shape == (7,)
    again = ReplayBuffer(5, 2, 1)
    again.load_state_dict(buf.state_dict())
    for a, b in zip(again.sample(7, np.random.default_rng(0)), batch):
        np.testing.assert_array_equal(a, b)
    again.add([0, 0], [0], -1.0, [0, 0], 0.0)  # the write position survived the round trip: the oldest (reward 2) goes
    assert sorted(again.state_dict()["rewards"].tolist()) == [-1, 10, 11, 12, 13]


def test_buffer_rejects_bad_shapes_and_empty_sampling():
    buf = ReplayBuffer(4, 3, 2)
    with pytest.raises(ValueError, match="empty replay buffer"):
        buf.sample(1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="do not match the buffer"):
        buf.add(np.zeros((2, 4)), np.zeros((2, 2)), 0.0, np.zeros((2, 4)), 0.0)


def test_truncated_normal_stays_in_bounds_and_is_reproducible():
    mean = np.array([0.0, 0.5, 1.0, 0.99])
    a = truncated_normal(np.tile(mean, 500), 0.5, np.random.default_rng(3))
    b = truncated_normal(np.tile(mean, 500), 0.5, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert a.min() >= 0.0 and a.max() <= 1.0
    assert a.reshape(500, 4).std(axis=0).min() > 0.1  # real spread, even at the edges
    np.testing.assert_array_equal(truncated_normal(mean, 0.0, np.random.default_rng(0)), mean)
    assert truncated_normal(0.3, 0.1, np.random.default_rng(0)).shape == ()


def test_noise_schedule_constant_then_decays_to_target():
    schedule = NoiseSchedule.decaying_to(0.5, 0.05, constant_episodes=10, decay_episodes=20)
    assert schedule.sigma_at(0) == schedule.sigma_at(10) == 0.5
    assert schedule.sigma_at(30) == pytest.approx(0.05)
    assert schedule.sigma_at(20) < 0.5
    with pytest.raises(ValueError, match="bad noise schedule"):
        NoiseSchedule(0.5, 0, 1.5)


def test_soft_update_moves_targets_by_tau():
    src, dst = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    before = dst.weight.detach().clone()
    soft_update(dst, src, 0.25)
    torch.testing.assert_close(dst.weight, 0.75 * before + 0.25 * src.weight.detach())


def test_ddpg_learns_a_one_dimensional_task():
    """Contextual bandit: state s in [0, 1], reward -(a - s)^2, so the best policy is a = s."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    agent = ActorCritic(ActorCriticConfig.ddpg(1, 1, hidden=(32, 32), actor_lr=3e-3, critic_lr=3e-3, gamma=0.0, batch_size=64, buffer_size=2000, learning_starts=64))
    probe = np.linspace(0.05, 0.95, 10)[:, None]
    error_before = np.abs(agent.act(probe)[:, 0] - probe[:, 0]).mean()
    for _ in range(500):
        states = rng.uniform(size=(8, 1))
        actions = np.clip(agent.act(states) + rng.normal(0, 0.3, (8, 1)), 0, 1)
        agent.remember(states, actions, -((actions - states) ** 2)[:, 0], states, 1.0)
        agent.update(rng)
    error_after = np.abs(agent.act(probe)[:, 0] - probe[:, 0]).mean()
    assert error_after < 0.1 and error_before > 0.2


def test_td3_is_a_configuration_of_the_same_class():
    td3 = ActorCritic(ActorCriticConfig.td3(3, 2))
    ddpg = ActorCritic(ActorCriticConfig.ddpg(3, 2))
    assert type(td3) is type(ddpg)
    assert len(td3.critics) == 2 and td3.config.policy_delay == 2 and td3.config.target_noise > 0
    assert len(ddpg.critics) == 1 and ddpg.config.policy_delay == 1 and ddpg.config.target_noise == 0
    rng = np.random.default_rng(0)
    small = ActorCritic(ActorCriticConfig.td3(3, 2, hidden=(8,), batch_size=4, learning_starts=4))
    assert small.update(rng) is None  # nothing to learn from yet
    small.remember(rng.uniform(size=(6, 3)), rng.uniform(size=(6, 2)), rng.uniform(size=6), rng.uniform(size=(6, 3)), 0.0)
    stats = [small.update(rng) for _ in range(4)]
    assert [s.actor_loss is None for s in stats] == [True, False, True, False]  # delayed policy updates
    # Paper defaults (AutoQ/HAQ): actor 1e-4, critic 1e-3, batch 64, replay 2000.
    assert (ddpg.config.actor_lr, ddpg.config.critic_lr, ddpg.config.batch_size, ddpg.config.buffer_size) == (1e-4, 1e-3, 64, 2000)


def test_actor_critic_state_round_trip_continues_identically():
    torch.manual_seed(1)
    cfg = ActorCriticConfig.ddpg(2, 1, hidden=(16,), learning_starts=4, batch_size=4, baseline_alpha=0.5)
    a = ActorCritic(cfg)
    rng = np.random.default_rng(0)
    a.remember(rng.uniform(size=(20, 2)), rng.uniform(size=(20, 1)), rng.uniform(size=20), rng.uniform(size=(20, 2)), 0.0)
    a.update(np.random.default_rng(1))
    state = a.state_dict()
    torch.manual_seed(99)
    b = ActorCritic(cfg)
    b.load_state_dict(state)
    stats_a, stats_b = a.update(np.random.default_rng(2)), b.update(np.random.default_rng(2))
    assert stats_a == stats_b
    probe = rng.uniform(size=(5, 2))
    np.testing.assert_array_equal(a.act(probe), b.act(probe))
    with pytest.raises(ValueError, match="was built with"):
        ActorCritic(cfg.with_changes(hidden=(8,))).load_state_dict(state)
