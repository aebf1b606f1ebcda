//! Hand-checkable cases of the whole module.

use ndarray::{Array3, Axis};

use super::*;

/// 4×4 tokens, 2×2 cells, no_rand: dst are tokens 0, 2, 8, 10 at angles
/// 0°, 90°, 180°, 270°; each src sits at a known angle from its best dst.
fn angles_4x4() -> Array3<f32> {
    let angle = [
        0.0, 12.0, 90.0, 85.0, //
        40.0, 100.0, 150.0, 290.0, //
        180.0, 205.0, 270.0, 235.0, //
        182.0, 316.0, 255.0, 72.0_f64,
    ];
    Array3::from_shape_fn((1, 16, 2), |(_, t, c)| {
        let a = angle[t].to_radians();
        (if c == 0 { a.cos() } else { a.sin() }) as f32
    })
}

#[test]
fn hand_checked_matching_on_4x4() {
    let m = bipartite_soft_matching_random2d(angles_4x4().view(), 4, 4, 2, 2, 3, None).unwrap();
    assert_eq!(m.tokens(), (16, 13));
    assert_eq!(m.b_idx(), [0, 2, 8, 10]);
    assert_eq!(m.a_idx(), [1, 3, 4, 5, 6, 7, 9, 11, 12, 13, 14, 15]);
    // distance to the best dst, by src position: 12 5 40 10 30 20 25 35 2 44 15 18 degrees
    assert_eq!(m.src_idx().row(0).to_vec(), [8, 1, 3]); // tokens 12, 3, 5
    assert_eq!(m.dst_idx().row(0).to_vec(), [2, 1, 1]); // into 8, 2, 2
    assert_eq!(m.unm_idx().row(0).to_vec(), [0, 10, 11, 5, 6, 4, 7, 2, 9]);

    // merge a tensor with token t = [t, 10 t]
    let x = Array3::from_shape_fn((1, 16, 2), |(_, t, c)| {
        (t * if c == 0 { 1 } else { 10 }) as f32
    });
    let merged = m.merge(x.view());
    let col0: Vec<f32> = merged.index_axis(Axis(2), 0).row(0).to_vec();
    let unm = [1.0, 14.0, 15.0, 7.0, 9.0, 6.0, 11.0, 4.0, 13.0];
    let dst = [0.0, (2.0 + 3.0 + 5.0) / 3.0, (8.0 + 12.0) / 2.0, 10.0];
    assert_eq!(col0, [&unm[..], &dst[..]].concat());
    assert_eq!(merged[[0, 10, 1]], (20.0f32 + 30.0 + 50.0) / 3.0);

    // unmerge rows labelled by their position in the merged tensor
    let y = Array3::from_shape_fn((1, 13, 1), |(_, i, _)| i as f32);
    let back: Vec<usize> = m.unmerge(y.view()).iter().map(|&v| v as usize).collect();
    //          t: 0  1  2  3   4  5   6  7  8   9  10 11 12  13 14 15
    assert_eq!(back, [9, 0, 10, 10, 7, 10, 5, 3, 11, 4, 12, 6, 11, 8, 1, 2]);
}

#[test]
fn block_merge_uses_the_config() {
    let cfg = TomeConfig {
        ratio: 0.2,
        random: false,
        ..Default::default()
    };
    let mut rng = PartitionRng::new(0);
    let m = block_merge(angles_4x4().view(), (4, 4), &cfg, &mut rng).unwrap();
    assert_eq!(m.r(), 3); // floor(16 * 0.2)
    assert_eq!(m.src_idx().row(0).to_vec(), [8, 1, 3]);
    assert_eq!(rng, PartitionRng::new(0), "no_rand draws nothing");
}

#[test]
fn ties_follow_torchs_unstable_sort() {
    // Identical tokens: every score is 1.0, every src's best dst is the first
    // dst in b_idx order (token 18, not token 0), and the edge order is what
    // torch 2.15.0's argsort leaves (tomesd on torch.ones(2, 64, 4), r = 10).
    let x = Array3::<f32>::ones((2, 64, 4));
    let m = bipartite_soft_matching_random2d(x.view(), 8, 8, 2, 2, 10, None).unwrap();
    assert_eq!(
        m.b_idx(),
        [18, 36, 38, 34, 32, 48, 22, 20, 50, 16, 52, 54, 0, 2, 4, 6]
    );
    assert_eq!(
        m.a_idx(),
        [
            47, 62, 39, 40, 41, 42, 43, 44, 45, 46, 55, 61, 49, 60, 59, 63, 51, 58, 57, 53, 56, 19,
            1, 3, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15, 17, 37, 21, 23, 24, 25, 26, 27, 28, 29, 30,
            31, 33, 35
        ]
    );
    for b in 0..2 {
        assert_eq!(
            m.src_idx().row(b).to_vec(),
            [36, 25, 26, 27, 28, 29, 30, 31, 32, 33]
        );
        assert_eq!(m.dst_idx().row(b).to_vec(), [0; 10]);
        assert_eq!(
            m.unm_idx().row(b).to_vec(),
            [
                34, 35, 24, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 12, 1, 2, 3, 4, 5, 6, 7, 8,
                9, 10, 11, 0, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23
            ]
        );
    }
}

#[test]
fn unmerge_of_merge_restores_unmerged_tokens() {
    let x = Array3::from_shape_fn((2, 96, 5), |(b, t, c)| {
        ((b * 7 + t * 13 + c * 29) % 31) as f32 - 15.0
    });
    let m = bipartite_soft_matching_random2d(x.view(), 12, 8, 2, 2, 40, None).unwrap();
    let merged = m.merge(x.view());
    assert_eq!(merged.dim(), (2, 56, 5));
    let back = m.unmerge(merged.view());
    for b in 0..2 {
        let merged_src: Vec<usize> = m.src_idx().row(b).iter().map(|&i| m.a_idx()[i]).collect();
        for t in 0..96 {
            let was_merged = merged_src.contains(&t);
            let dst_was_merged_into =
                m.b_idx().contains(&t) && m.dst_idx().row(b).iter().any(|&j| m.b_idx()[j] == t);
            if !was_merged && !dst_was_merged_into {
                assert_eq!(
                    back.index_axis(Axis(0), b).row(t),
                    x.index_axis(Axis(0), b).row(t),
                    "b {b} t {t}"
                );
            }
        }
        // a merged src gets its dst's merged row
        for (k, &i) in m.src_idx().row(b).iter().enumerate() {
            let dst_token = m.b_idx()[m.dst_idx()[[b, k]]];
            assert_eq!(
                back.index_axis(Axis(0), b).row(m.a_idx()[i]),
                back.index_axis(Axis(0), b).row(dst_token)
            );
        }
    }
}

#[test]
fn the_maximum_ratio_merges_every_src() {
    let x = Array3::from_shape_fn((1, 64, 3), |(_, t, c)| ((t * 5 + c * 11) % 17) as f32 + 1.0);
    let m = bipartite_soft_matching_random2d(x.view(), 8, 8, 2, 2, 1000, None).unwrap();
    assert_eq!(m.tokens(), (64, 16), "r capped at the 48 src tokens");
    assert_eq!(m.unm_idx().ncols(), 0);
}

#[test]
fn downsample_levels_of_sd_latents() {
    for (hw, levels) in [
        ((64, 64), [(4096, 1), (1024, 2), (256, 4), (64, 8)]),
        ((96, 96), [(9216, 1), (2304, 2), (576, 4), (144, 8)]),
        ((64, 96), [(6144, 1), (1536, 2), (384, 4), (96, 8)]),
        ((100, 100), [(10000, 1), (2500, 2), (625, 4), (169, 8)]),
    ] {
        for (n, ds) in levels {
            assert_eq!(downsample(hw, n), ds, "{hw:?} {n}");
        }
    }
}

#[test]
fn block_params_follow_compute_merge() {
    let params = |hw, n, cfg: &TomeConfig| block_params(hw, n, cfg).unwrap();
    let cfg = TomeConfig::default();
    assert_eq!(
        params((64, 64), 4096, &cfg),
        Some(BlockParams {
            downsample: 1,
            h: 64,
            w: 64,
            r: 2048
        })
    );
    assert_eq!(params((64, 64), 1024, &cfg), None, "max_downsample 1");
    let cfg2 = TomeConfig {
        max_downsample: 2,
        ratio: 0.3,
        ..cfg
    };
    assert_eq!(
        params((100, 100), 2500, &cfg2),
        Some(BlockParams {
            downsample: 2,
            h: 50,
            w: 50,
            r: 750
        })
    );
    let cfg8 = TomeConfig {
        max_downsample: 8,
        ..cfg
    };
    assert_eq!(
        params((100, 100), 169, &cfg8),
        Some(BlockParams {
            downsample: 8,
            h: 13,
            w: 13,
            r: 84
        })
    );
    // r = int(N * ratio) = 0
    let tiny = TomeConfig { ratio: 0.01, ..cfg };
    assert_eq!(params((8, 8), 64, &tiny), None);
    let off = TomeConfig {
        targets: Targets {
            self_attn: false,
            cross_attn: false,
            mlp: false,
        },
        ..cfg
    };
    assert_eq!(params((64, 64), 4096, &off), None);
}

#[test]
fn grids_that_do_not_hold_the_tokens_are_errors() {
    // latent 7x5, third level: 4 tokens (2x2), guessed downsample 3, a 3x2 grid
    let cfg = TomeConfig {
        max_downsample: 4,
        ..Default::default()
    };
    let err = block_params((7, 5), 4, &cfg).unwrap_err();
    assert_eq!(
        err,
        TomeError::GridMismatch {
            latent_h: 7,
            latent_w: 5,
            tokens: 4,
            downsample: 3,
            h: 3,
            w: 2
        }
    );
    assert!(err.to_string().contains("max_downsample below 3"), "{err}");
    // not eligible, or r == 0: tomesd never looks at the grid
    assert_eq!(
        block_params(
            (7, 5),
            4,
            &TomeConfig {
                max_downsample: 2,
                ..cfg
            }
        ),
        Ok(None)
    );
    assert_eq!(
        block_params((7, 5), 4, &TomeConfig { ratio: 0.2, ..cfg }),
        Ok(None)
    );
    // every level of SD latents with sides that are multiples of 8, and of odd ones
    let all = TomeConfig {
        max_downsample: 8,
        ..cfg
    };
    for side in [8, 9, 13, 17, 32, 33, 63, 64, 65, 96, 97, 100, 127, 128] {
        let mut n = side;
        for _ in 0..4 {
            block_params((side, side), n * n, &all).unwrap();
            n = n.div_ceil(2);
        }
    }
}

#[test]
fn odd_batches_never_draw() {
    let cfg = TomeConfig::default();
    let x = Array3::from_shape_fn((1, 64, 3), |(_, t, c)| ((t * 5 + c * 11) % 17) as f32 + 1.0);
    let mut rng = PartitionRng::new(9);
    let m = block_merge(x.view(), (8, 8), &cfg, &mut rng).unwrap();
    assert_eq!(rng, PartitionRng::new(9));
    let top_left = bipartite_soft_matching_random2d(x.view(), 8, 8, 2, 2, 32, None).unwrap();
    assert_eq!(m, top_left);
}
